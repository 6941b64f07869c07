"""Registration entry point (filled in by this plugin's components)."""

import trainframe


@trainframe.hookimpl
def trainframe_register(registry):
    pass
