"""The corpus: the DICOM files a scenario replays through the simulated site.

:class:`Corpus` indexes a folder from the file headers, and
:meth:`Corpus.select` filters it. :func:`group_instances` splits a selection
into the units sent together. :func:`materialize_repeat` makes copies with
new UIDs for repeated sends. :func:`bundled_corpus` builds the corpus that
ships with the simulator from pydicom's test files.
"""

from simulator.corpus.bundled import (
    BUNDLED_FILES,
    BUNDLED_FOLDER,
    MANIFEST_NAME,
    BundledFile,
    bundled_corpus,
    default_cache_dir,
)
from simulator.corpus.grouping import GROUP_KEYS, group_instances
from simulator.corpus.index import Corpus, CorpusInstance
from simulator.corpus.repeat import materialize_repeat
from simulator.errors import CorpusError

__all__ = [
    "BUNDLED_FILES",
    "BUNDLED_FOLDER",
    "GROUP_KEYS",
    "MANIFEST_NAME",
    "BundledFile",
    "Corpus",
    "CorpusError",
    "CorpusInstance",
    "bundled_corpus",
    "default_cache_dir",
    "group_instances",
    "materialize_repeat",
]
