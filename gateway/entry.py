"""The entry point of every component: the one call each ``components/<entry>/main.py`` makes.

Kept apart from :mod:`gateway.components` so that the table stays a leaf every layer may read (the build reads it
before anything is installed, destinations read their default routes from it) while this module, at the top, wires
the runtime, the collector and the component's runner together.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.collector import collector_runner
from gateway.components import component, config_model, load
from gateway.errors import ConfigError
from gateway.runtime import component_main


def entry_point(name: str) -> Callable[[], int]:
    """The ``main`` of component ``name``'s entry point: ``components/<entry>/main.py`` is only this call.

    Loads (imports) the configuration model and the runner now, so that importing the entry point imports
    everything the component runs: the build checks that from its zip with only its requirements installed.
    """
    spec = component(name)
    model = config_model(name)
    if spec.kind == "collector":
        run = collector_runner(name, load(spec.source))
    elif spec.run:
        run = load(spec.run)
    else:
        raise ConfigError(f"{name} has no entry point", fix="it runs nothing of its own (see its recipe)")

    def main() -> int:
        return component_main(name, model, run, quiet_loggers=spec.noisy_loggers)

    return main
