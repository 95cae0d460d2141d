import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "costmon.settings")
application = get_wsgi_application()

# Import every view now (Django would on the first request), and let plotly set up its figure
# types: the first page a worker serves then costs what the next ones do.
from django.urls import get_resolver  # noqa: E402

from usage.charts import warm_up  # noqa: E402

get_resolver().url_patterns  # noqa: B018
warm_up()
