"""Contracts and serde: what conveyor's messages look like and how they are encoded.

- :mod:`conveyor.schemas.contracts`: the Avro contracts (``.avsc`` package data).
- :mod:`conveyor.schemas.serde`: Confluent wire format through a schema registry.
- :mod:`conveyor.schemas.payload`: job payload contracts declared by handlers.
- :mod:`conveyor.schemas.registry`: ``conveyor registry serve``, a compatible registry.
"""

from __future__ import annotations
