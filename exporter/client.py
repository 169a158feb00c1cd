"""The Python client, ``mlmon_client`` (clients/python/, the light ``mlmon-client`` distribution), under its
former name: ``from exporter import client`` and ``exporter.client.Client`` keep working, as the very same module.
"""

import sys

import mlmon_client

sys.modules[__name__] = mlmon_client
