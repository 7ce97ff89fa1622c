"""once-for-all's files as first-class inputs and outputs.

* :mod:`ofa_search.interop.ofa_supernet` — import once-for-all's ``OFAMobileNetV3``
  checkpoints (``ofa_mbv3_d234_e346_k357_w1.0`` / ``…_w1.2``) into a workspace supernet
  checkpoint, and export a workspace supernet in the form once-for-all's code loads.

The accuracy predictor side lives in :mod:`predictors.accuracy_ofa` (predictors depend on
the core only); arch dicts in :meth:`ofa_search.arch.Arch.from_ofa_dict` /
:meth:`~ofa_search.arch.Arch.to_ofa_dict`.
"""

from ofa_search.interop.ofa_supernet import (
    OFA_FORMAT_NOTE,
    ImportReport,
    export_ofa_supernet,
    import_ofa_supernet,
    map_ofa_state_dict,
    ofa_to_ours,
    ours_to_ofa,
    read_ofa_state_dict,
)

__all__ = [
    "OFA_FORMAT_NOTE",
    "ImportReport",
    "export_ofa_supernet",
    "import_ofa_supernet",
    "map_ofa_state_dict",
    "ofa_to_ours",
    "ours_to_ofa",
    "read_ofa_state_dict",
]
