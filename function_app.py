"""The Automate365 Connections function app: one FunctionApp, its functions in blueprints.

Importing this module makes no network call and creates no SDK client; clients are created
lazily, on first use, by the modules that need them. It installs the SIGTERM handler through
which the host asks the app to stop (`connections.shutdown`): waits end, and the renewal sweep
leaves what it has not worked due for the next run.
"""

import azure.functions as func

from connections import shutdown
from connections.api import bp as connections_api
from proxy.api import bp as proxy_api
from renewal.triggers import bp as renewal_triggers
from triggers.api import bp as triggers_api
from triggers.functions import bp as trigger_functions

shutdown.install()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
app.register_functions(connections_api)
app.register_functions(proxy_api)
app.register_functions(renewal_triggers)
app.register_functions(triggers_api)
app.register_functions(trigger_functions)
