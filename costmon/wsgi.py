import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "costmon.settings")
django_application = get_wsgi_application()

# Import every view and build the URL reverser now (Django would on the first request, about
# 150 ms for the reverser), and let plotly set up its figure types: the first page a worker
# serves then costs what the next ones do.
from django.urls import reverse  # noqa: E402

from costmon.web.dashboard.charts import warm_up  # noqa: E402
from costmon.web.fastpath import ApiFastPath  # noqa: E402

# Usage reports and checks skip the middleware stack (costmon.web.fastpath); the rest is Django's.
application = ApiFastPath(django_application)

reverse("dashboard-overview", args=["warm-up"])
warm_up()

# Everything loaded so far (Django, every view, plotly's figure types: some 180,000 objects)
# lives as long as the worker: moved out of the garbage collector's sight, a full collection no
# longer walks it. One used to fall inside nearly every overview that summed its rollups afresh
# (its thousands of per-end-user sums) and took about 100 ms of that view.
gc.collect()
gc.freeze()
