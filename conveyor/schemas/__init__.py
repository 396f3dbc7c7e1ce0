"""Contracts and serde: what conveyor's messages look like and how they are encoded.

- :mod:`conveyor.schemas.contracts`: the Avro contracts (``.avsc`` package data).
- :mod:`conveyor.schemas.serde`: encoding and decoding through a schema registry.
- :mod:`conveyor.schemas.wire`: the Confluent wire format's header, and the registry's
  failures as conveyor's errors.
- :mod:`conveyor.schemas.payload`: job payload contracts declared by handlers.
- :mod:`conveyor.schemas.registry`: ``conveyor registry serve``, a compatible registry.
"""

from __future__ import annotations
