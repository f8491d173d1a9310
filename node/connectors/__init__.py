"""Connectors: pulling indicators from where CERTs keep them, pushing sightings of matches back.

    base.py       the Source and Sink protocols, secrets, errors, the registry of types
    taxii.py      TAXII 2.1 collections (taxii2-client): a source and a sink
    misp.py       MISP REST (pymisp): attribute search as a source, sightings on attributes as a sink
    mispfeed.py   MISP feeds over HTTP(S): manifest.json, then the events newer than the cursor
    sync.py       pulling sources into the store through the file importer's path
    stix_out.py   matches as STIX 2.1 sightings (stix2)
    push.py       pushing matches not yet pushed to a sink, each once
    scheduler.py  `node serve`'s background pulls and pushes, with backoff

A new type (MISP REST, MISP feeds) is one more module with a source and/or sink class, named
below; node.toml's `type` accepts exactly these names.
"""

from typing import Final

# type -> "module:class"; a module is imported only when a connector of its type is used.
SOURCE_TYPES: Final = {
    "taxii": "node.connectors.taxii:TaxiiSource",
    "misp": "node.connectors.misp:MispSource",
    "misp-feed": "node.connectors.mispfeed:MispFeedSource",
}
SINK_TYPES: Final = {
    "taxii": "node.connectors.taxii:TaxiiSink",
    "misp": "node.connectors.misp:MispSink",
}
