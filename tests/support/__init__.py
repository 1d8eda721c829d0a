"""Helpers shared by the tests: starting real peers, running a component, building inputs, reading outputs.

One module per topic (``opcua_peer``, ``modbus_peer``, ``simulator``, ``publisher``, ``anomaly`` ...). Nothing here
is a test and nothing here is a fixture: pytest fixtures stay in the ``conftest.py`` files, where pytest finds them,
and call these functions.

The rule (checked by tests/test_support_rule.py): a test module imports helpers only from ``tests.support``,
``devkit`` and the product (``gateway``, ``simulator``, ``tools``), never from another test module or from a
conftest. A helper a second test module needs moves here, under a public name.
"""
