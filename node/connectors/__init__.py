"""Connectors: pulling indicators from where CERTs keep them, pushing sightings of matches back.

    base.py       the Source and Sink protocols, secrets, errors, the registry of types
    taxii.py      TAXII 2.1 collections (taxii2-client): a source and a sink
    sync.py       pulling sources into the store through the file importer's path
    stix_out.py   matches as STIX 2.1 sightings (stix2)
    push.py       pushing matches not yet pushed to a sink, each once
    scheduler.py  `node serve`'s background pulls and pushes, with backoff

A new type (MISP REST, MISP feeds) is one more module with a source and/or sink class, named
below; node.toml's `type` accepts exactly these names.
"""

from typing import Final

# type -> "module:class"; a module is imported only when a connector of its type is used.
SOURCE_TYPES: Final = {"taxii": "node.connectors.taxii:TaxiiSource"}
SINK_TYPES: Final = {"taxii": "node.connectors.taxii:TaxiiSink"}
