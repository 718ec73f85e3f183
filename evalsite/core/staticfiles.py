"""How static files are stored at ``collectstatic``: hashed names, gzip and brotli copies (WhiteNoise).

A hashed name changes whenever the file does, so WhiteNoise can tell browsers to keep it for good
(``Cache-Control: immutable``) and a page never runs a stale script after a deploy.
"""

from django.contrib.staticfiles.storage import ManifestStaticFilesStorage
from whitenoise.storage import CompressedManifestStaticFilesStorage

# The listener page is plain ES modules that import each other by relative path ("./dom.js"). Django
# rewrites those imports to the hashed names only when asked (support_js_module_import_aggregation);
# without it a hashed app.js would import the unhashed, briefly cached dom.js, and a deploy could pair
# new code with an old module. The rewrite is a regular expression, so it is applied to our own
# modules only: not to vendored bundles (plotly.js, Swagger UI), whose minified text it could misread.
_JS_MODULE_IMPORTS = ManifestStaticFilesStorage._js_module_import_aggregation_patterns[1]


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    patterns = (*CompressedManifestStaticFilesStorage.patterns, ("listening/*.js", _JS_MODULE_IMPORTS))
