"""``padim watch``: images judged as they arrive, verdicts sent to the machines around a line.

A source (:mod:`~padim.jobs.watch.folder`, :mod:`~padim.jobs.watch.video`, standard input in
:mod:`~padim.jobs.watch.sources`) puts arrivals in a bounded queue (:mod:`~padim.jobs.watch.arrivals`);
the judging loop (:mod:`~padim.jobs.watch.judge`) runs ``padim predict``'s pipeline on them and
records each verdict in order: the message in the spool (:mod:`padim.outputs.spool`, delivered by
:mod:`padim.outputs.delivery` to MQTT and webhooks), the row in ``predictions.csv``, which is also
the journal that makes a restart judge each file once (:mod:`~padim.jobs.watch.journal`).
:mod:`~padim.jobs.watch.status` prints the status line. :func:`watch` puts it together. No torch.
"""

from padim.jobs.watch.job import WatchSummary, check_options, watch
from padim.jobs.watch.sources import source_kind

__all__ = ["WatchSummary", "check_options", "source_kind", "watch"]
