"""A storage SCP that keeps nothing: the most a pynetdicom receiver can do (benchmark only).

``make bench`` measures it beside dcmtk ``storescp``, Orthanc and radnode. It
is radnode's receive path less everything radnode does with an instance:
the same pynetdicom configuration and tuning (:mod:`node.dicom.tuning`), the
same storage presentation contexts, and a C-STORE handler that decodes the
dataset and takes its bytes, as radnode's does, then answers Success without
writing, indexing or auditing anything. Its images/s bound radnode's from
above on the same machine, whatever radnode's own work costs.

Usage: ``python deploy/bare_scp.py PORT`` (listens on the loopback interface
until terminated).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, cast

from pynetdicom import AE, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.presentation import AllStoragePresentationContexts

from node.dicom.syntaxes import ACCEPTED_TRANSFER_SYNTAXES
from node.dicom.tuning import tune_receive
from node.peers import LOOPBACK
from node.settings import NodeSettings


def _on_store(event: evt.Event) -> int:
    """Decode the dataset and take its bytes (as radnode does); keep nothing."""
    request = cast(C_STORE, event.request)
    ds = event.dataset
    _ = (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    _ = request.DataSet.getvalue() if request.DataSet is not None else b""
    return 0x0000


def _on_accepted(event: evt.Event) -> None:
    tune_receive(event.assoc)


def main(argv: list[str]) -> int:
    """Serve C-STORE on ``argv[0]`` until terminated."""
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: bare_scp.py PORT", file=sys.stderr)
        return 2
    pynetdicom_config.LOG_HANDLER_LEVEL = "none"
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    ae = AE(ae_title="BARESCP")
    ae.maximum_pdu_size = NodeSettings.model_fields["max_pdu"].default  # radnode's default
    ae.maximum_associations = 32
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(str(cx.abstract_syntax), ACCEPTED_TRANSFER_SYNTAXES)
    handlers: list[Any] = [(evt.EVT_C_STORE, _on_store), (evt.EVT_ACCEPTED, _on_accepted)]
    ae.start_server((LOOPBACK, int(argv[0])), block=True, evt_handlers=handlers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
