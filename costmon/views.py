from __future__ import annotations

from django.http import HttpRequest, HttpResponseRedirect


def home(request: HttpRequest) -> HttpResponseRedirect:
    # The dashboard (issue 5) will live here; until then, staff start in the admin.
    return HttpResponseRedirect("/admin/")
