"""The plugin contract: what every source connection model and every destination model provides.

A discriminated union of config models is the registry: ``type`` in a configuration picks the model (pydantic, in
:mod:`gateway.componentconfig`), and the model knows how to build its implementation and how to check its peer.
Nothing is looked up by module name, so a module may be named anything and an unknown ``type`` is a validation
error, not a silent fallback.

Who calls what, and when:

- ``build()`` is called by the component that runs the plugin, after the configuration validated: the publisher's
  entry point once per enabled destination at start (``components/publisher/main.py``), the collector runtime once
  per connection attempt of a source (:func:`gateway.collector.collector_runner`; a source object lives for one
  session). It imports the implementation inside the method: validating a configuration (components, deployments,
  ``gatewayctl config check``, the build) never loads a protocol SDK or a cloud client. It does no I/O; connecting
  is the implementation's ``start`` or ``run``.
- ``diagnose(timeout_s)`` is called by ``gatewayctl doctor`` (:func:`gateway.cli.checks.probe`) for every enabled
  connection and destination, concurrently, each within ``timeout_s`` plus a margin. It checks the live peer the
  way the component would use it and returns :class:`~gateway.diagnostics.Finding` s; a peer problem is a failed
  finding, never an exception (see :mod:`gateway.diagnostics`).

The implementations satisfy their own protocols: :class:`gateway.destinations.base.Destination` (start, send,
close with a deadline) and :class:`gateway.sources.common.Source` (run).
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from gateway.diagnostics import Finding

T_co = TypeVar("T_co", covariant=True)


class Plugin(Protocol[T_co]):
    """A config model that is also its plugin's entry: ``Plugin[Destination]``, ``Plugin[Source]``."""

    @property
    def type(self) -> str:
        """The discriminator: the value of ``type`` in a configuration."""
        ...

    @property
    def name(self) -> str:
        """The configured name: it keys positions, status, counters and doctor's sections."""
        ...

    def build(self) -> T_co:
        """The implementation for this configuration, imported lazily; no I/O."""
        ...

    async def diagnose(self, timeout_s: float) -> list[Finding]:
        """Check the live peer within about ``timeout_s``; problems are findings, never exceptions."""
        ...
