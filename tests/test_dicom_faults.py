"""Tests of the DICOM-level faults between real pynetdicom peers on loopback sockets."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom.pdu import A_ABORT_RQ, A_ASSOCIATE_RJ, P_DATA_TF
from pynetdicom.sop_class import CTImageStorage, MRImageStorage
from test_pdu_recording import (
    CT_SMALL,
    associate_rq_bytes,
    make_large_file,
    of_kind,
    read_events,
    recorder,
    send_files,
    start_link,
    wait_until,
)

from simulator.links import AssociationRegistry, LinkProxy
from simulator.links.faults import FaultError, FaultSpec, LinkFaults
from simulator.links.pdu import PDUReader
from simulator.links.pdu_items import DimseCommand, PDataTF
from simulator.recording.recorder import BoundRecorder, Recorder

__all__ = ["recorder", "start_link"]  # fixtures used here by name

StartLink = Callable[..., Any]


def fault(fault_type: str, direction: str = "upstream", **attributes: Any) -> dict[str, Any]:
    """Return a fault spec as a scenario would write it."""
    return {
        "name": f"test-{fault_type}",
        "type": fault_type,
        "direction": direction,
        "attributes": attributes,
    }


async def finish(link: LinkProxy) -> None:
    """Wait until the link has no open connection, then stop it."""
    await wait_until(lambda: link.stats.connections_open == 0)
    await link.stop()


def triggered(recorder: Recorder, **fields: Any) -> list[dict[str, Any]]:
    return of_kind(read_events(recorder.path), "link.fault_triggered", **fields)


class TestAssociateReject:
    @pytest.mark.parametrize(("result", "source", "reason"), [(1, 1, 7), (2, 3, 1)])
    async def test_scu_gets_chosen_rj(
        self, start_link: StartLink, recorder: Recorder, result: int, source: int, reason: int
    ) -> None:
        """The SCU receives exactly the chosen A-ASSOCIATE-RJ and no request reaches the SCP."""
        spec = fault("associate_reject", result=result, source=source, reason=reason)
        link, scp = await start_link(faults=[spec])
        sent = await asyncio.to_thread(send_files, link.port, [CT_SMALL])
        await finish(link)
        events = read_events(recorder.path)
        rejections = [pdu for pdu in sent.received_pdus if isinstance(pdu, A_ASSOCIATE_RJ)]
        [action] = triggered(recorder, action="associate-rejected")
        [closed] = of_kind(events, "link.connection_closed")

        assert sent.established is False
        assert [(p.result, p.source, p.reason_diagnostic) for p in rejections] == [
            (result, source, reason)
        ]
        assert action["attributes"] == {"result": result, "source": source, "reason": reason}
        assert action["delivered"] is True
        assert closed["bytes_written"]["upstream"] == 0
        assert closed["closed_by"] == "proxy"
        assert scp.stored == []

    def test_reason_must_fit_source(self, recorder: Recorder) -> None:
        """A reason that PS3.8 does not define for the source is rejected with both values."""
        faults = LinkFaults("ct-to-pacs", 1, BoundRecorder(recorder, {}))
        spec = FaultSpec.model_validate(fault("associate_reject", source=2, reason=7))

        with pytest.raises(FaultError, match="reason 7 is not defined for source 2"):
            faults.add(spec)


class TestAbort:
    async def test_abort_after_instances(self, start_link: StartLink, recorder: Recorder) -> None:
        """The SCU stores N instances, then gets the proxy's A-ABORT on the next one."""
        link, scp = await start_link(faults=[fault("abort", after_instances=2, source=2, reason=0)])
        sent = await asyncio.to_thread(send_files, link.port, [CT_SMALL] * 4, dimse_timeout_s=2)
        await finish(link)
        events = read_events(recorder.path)
        aborts = [pdu for pdu in sent.received_pdus if isinstance(pdu, A_ABORT_RQ)]
        [action] = triggered(recorder, action="a-abort")
        [trace] = of_kind(events, "link.pdu_trace")

        assert sent.statuses == [0x0000, 0x0000]
        assert sent.aborted is True
        assert [(pdu.source, pdu.reason_diagnostic) for pdu in aborts] == [(2, 0)]
        assert len(scp.stored) == 2
        assert action["instances_forwarded"] == 2
        assert action["abort_sent"] == {"upstream": True, "downstream": True}
        assert "abort" in trace["reasons"]

    async def test_a_p_abort_after_pdata(self, start_link: StartLink, recorder: Recorder) -> None:
        """An A-P-ABORT closes both connections after the given number of P-DATA-TF PDUs."""
        spec = fault("abort", after_pdata=1, kind="a-p-abort")
        link, scp = await start_link(faults=[spec])
        sent = await asyncio.to_thread(send_files, link.port, [CT_SMALL], dimse_timeout_s=2)
        await finish(link)
        [action] = triggered(recorder, action="a-p-abort")
        [closed] = of_kind(read_events(recorder.path), "link.connection_closed")

        assert sent.aborted is True
        assert not any(isinstance(pdu, A_ABORT_RQ) for pdu in sent.received_pdus)
        assert action["pdata_forwarded"] == 1
        assert closed["pdus"]["upstream"]["p_data_tf"] >= 2
        assert scp.stored == []


class TestStallAndHold:
    async def test_stall_delays_data_set(self, start_link: StartLink, recorder: Recorder) -> None:
        """Each C-STORE takes at least the stall time, and the objects still arrive."""
        link, scp = await start_link(faults=[fault("stall", delay_ms=400, command="C-STORE-RQ")])
        sent = await asyncio.to_thread(send_files, link.port, [CT_SMALL] * 2)
        await finish(link)
        actions = triggered(recorder, action="data-set-held")

        assert sent.statuses == [0x0000, 0x0000]
        assert min(sent.store_s) >= 0.35
        assert len(scp.stored) == 2
        assert [a["command"] for a in actions] == ["C-STORE-RQ", "C-STORE-RQ"]

    async def test_hold_release(self, start_link: StartLink, recorder: Recorder) -> None:
        """The A-RELEASE-RP arrives after the hold time and the release still succeeds."""
        link, _scp = await start_link(faults=[fault("hold_release", "downstream", delay_ms=500)])
        sent = await asyncio.to_thread(send_files, link.port, [CT_SMALL])
        await finish(link)
        [action] = triggered(recorder, action="release-held")

        assert sent.statuses == [0x0000]
        assert sent.release_s is not None and sent.release_s >= 0.45
        assert sent.aborted is False
        assert action["attributes"] == {"delay_ms": 500, "forever": False}

    async def test_hold_release_forever(self, start_link: StartLink, recorder: Recorder) -> None:
        """With the response held for ever, the SCU runs into its ACSE timeout and aborts."""
        link, _scp = await start_link(faults=[fault("hold_release", forever=True)])
        sent = await asyncio.to_thread(send_files, link.port, [CT_SMALL], 16382, 1)
        await finish(link)
        events = read_events(recorder.path)

        assert sent.statuses == [0x0000]
        assert sent.aborted is True
        assert len(of_kind(events, "link.pdu", pdu="abort", direction="upstream")) == 1


class TestCorruptPDU:
    async def test_corrupt_type_makes_peer_abort(
        self, start_link: StartLink, recorder: Recorder
    ) -> None:
        """A P-DATA-TF whose type byte became 0x0A makes the SCP abort the association."""
        spec = fault("corrupt_pdu", pdu_type="p_data_tf", occurrence=1, new_type=0x0A)
        link, scp = await start_link(faults=[spec])
        sent = await asyncio.to_thread(send_files, link.port, [CT_SMALL])
        await finish(link)
        events = read_events(recorder.path)
        [action] = triggered(recorder, action="header-rewritten")
        peer_aborts = of_kind(events, "link.pdu", pdu="abort", direction="downstream")

        assert action["original_type"] == 0x04
        assert action["written_type"] == 0x0A
        assert sent.statuses == []
        assert sent.aborted is True
        # pynetdicom 3.0.4 replies to the unrecognised PDU with an A-ABORT of source 2, reason 0
        # (PS3.8 action AA-8), and then one more for each stray PDU it reads in the body.
        assert (peer_aborts[0]["source"], peer_aborts[0]["reason"]) == (2, 0)
        assert scp.stored == []

    async def test_corrupt_length_by_index(self, start_link: StartLink, recorder: Recorder) -> None:
        """A new length on the A-ASSOCIATE-RQ keeps the acceptor from sending an A-ASSOCIATE-AC."""
        rq = associate_rq_bytes()
        spec = fault("corrupt_pdu", pdu_index=1, new_length=len(rq) + 100)
        link, _scp = await start_link(faults=[spec])
        reader, writer = await asyncio.open_connection("127.0.0.1", link.port)
        writer.write(rq)
        await writer.drain()
        await wait_until(lambda: bool(triggered(recorder)))
        writer.close()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        await finish(link)
        [action] = triggered(recorder, action="header-rewritten")
        events = read_events(recorder.path)

        assert action["original_length"] == len(rq) - 6
        assert action["written_length"] == len(rq) + 100
        assert of_kind(events, "link.pdu", pdu="associate_ac") == []


class TestAnswerStatus:
    async def test_status_reaches_scu(self, start_link: StartLink, recorder: Recorder) -> None:
        """The SCU gets status 0xA700 from the proxy and the SCP stores nothing."""
        spec = fault("answer_status", status=0xA700, error_comment="proxy says no")
        link, scp = await start_link(faults=[spec])
        sent = await asyncio.to_thread(send_files, link.port, [CT_SMALL] * 2)
        await finish(link)
        events = read_events(recorder.path)
        sop_instance_uid = str(pydicom.dcmread(CT_SMALL).SOPInstanceUID)
        responses = of_kind(events, "link.pdu", command="C-STORE-RSP")
        actions = triggered(recorder, action="answered")
        [closed] = of_kind(events, "link.connection_closed")

        assert sent.statuses == [0xA700, 0xA700]
        assert sent.aborted is False
        assert scp.stored == []
        assert responses == []  # the SCP sent no response because no request reached it
        assert len(actions) == 2
        assert all(a["affected_sop_instance_uid"] == sop_instance_uid for a in actions)
        assert all(a["response_sent"] is True for a in actions)
        assert closed["commands"]["upstream"] == {"C-STORE-RQ": 2}
        assert closed["bytes_written"]["upstream"] < 2000

    async def test_response_command_set(self, start_link: StartLink, recorder: Recorder) -> None:
        """The proxy's C-STORE-RSP carries every element PS3.7 requires, decoded by the reader."""
        spec = fault("answer_status", status=0xC000, error_comment="odd")
        link, _scp = await start_link(faults=[spec])
        sent = await asyncio.to_thread(send_files, link.port, [CT_SMALL])
        await finish(link)
        [p_data] = [pdu for pdu in sent.received_pdus if isinstance(pdu, P_DATA_TF)]
        reader = PDUReader()
        results = reader.feed(p_data.encode())
        [command] = [r for r in results if isinstance(r, DimseCommand)]
        [pdu] = [r for r in results if isinstance(r, PDataTF)]
        dataset = pydicom.dcmread(CT_SMALL)

        assert sent.statuses == [0xC000]
        assert pdu.pdvs[0].is_command and pdu.pdvs[0].is_last
        assert command.command == "C-STORE-RSP"
        assert command.context_id == 1
        assert command.message_id_being_responded_to == 1
        assert command.affected_sop_class_uid == CTImageStorage
        assert command.affected_sop_instance_uid == str(dataset.SOPInstanceUID)
        assert command.has_data_set is False
        assert command.status == 0xC000
        assert command.error_comment == "odd"

    async def test_other_sop_class_passes(self, start_link: StartLink, recorder: Recorder) -> None:
        """A request of another SOP class than ``sop_class`` reaches the SCP."""
        spec = fault("answer_status", status=0xA700, sop_class=MRImageStorage)
        link, scp = await start_link(faults=[spec])
        sent = await asyncio.to_thread(send_files, link.port, [CT_SMALL])
        await finish(link)

        assert sent.statuses == [0x0000]
        assert len(scp.stored) == 1
        assert triggered(recorder) == []


class TestMaximumLength:
    async def test_clamp_through_middlebox(
        self, start_link: StartLink, recorder: Recorder, tmp_path: Path
    ) -> None:
        """Clamped to the middle box's limit, both sides negotiate it and a 4 MB store passes."""
        path = tmp_path / "large.dcm"
        uid, digest = make_large_file(path, 4 * 1024 * 1024)
        faults = [
            fault("clamp_max_length", max_length=8192),
            fault("middlebox_limit", max_pdu_length=8192),
        ]
        link, scp = await start_link(scp_max_pdu=65536, faults=faults)
        sent = await asyncio.to_thread(send_files, link.port, [path], 16384)
        await finish(link)
        events = read_events(recorder.path)
        rewrites = triggered(recorder, action="max-length-rewritten")

        assert sent.statuses == [0x0000]
        assert sent.acceptor_max_length == 8192
        assert scp.requestor_max_lengths == [8192]
        assert scp.stored == [(uid, digest)]
        assert [
            (r["pdu"], r["original_max_length"], r["rewritten_max_length"]) for r in rewrites
        ] == [
            ("associate_rq", 16384, 8192),
            ("associate_ac", 65536, 8192),
        ]
        assert of_kind(events, "link.pdu_over_middlebox_limit") == []

    async def test_unclamped_middlebox_fails(
        self, start_link: StartLink, recorder: Recorder, tmp_path: Path
    ) -> None:
        """Without clamping, the first PDU over 8192 bytes ends the association at the box."""
        path = tmp_path / "large.dcm"
        make_large_file(path, 4 * 1024 * 1024)
        faults = [fault("middlebox_limit", max_pdu_length=8192)]
        link, scp = await start_link(scp_max_pdu=65536, faults=faults)
        sent = await asyncio.to_thread(send_files, link.port, [path], 16384)
        await finish(link)
        events = read_events(recorder.path)
        [over] = of_kind(events, "link.pdu_over_middlebox_limit")
        [closed] = of_kind(events, "link.connection_closed")
        [trace] = of_kind(events, "link.pdu_trace")
        upstream_pdata = [h for h in trace["headers"]["upstream"] if h["pdu"] == "p_data_tf"]

        assert sent.statuses == []
        assert scp.stored == []
        assert over["direction"] == "upstream"
        assert over["pdu"] == "p_data_tf"
        assert over["length"] == 65536  # pynetdicom fills each PDU to the acceptor's maximum
        assert over["length"] == next(h["length"] for h in upstream_pdata if h["length"] > 8192)
        assert over["limit"] == 8192
        assert over["action"] == "reset"
        assert closed["close_kind"] == "reset"
        assert closed["closed_by"] == "proxy"
        assert "middlebox-limit" in trace["reasons"]

    async def test_proxy_max_pdu_length_abort(
        self, start_link: StartLink, recorder: Recorder, tmp_path: Path
    ) -> None:
        """The proxy's own max_pdu_length with action abort sends A-ABORT to the SCU."""
        path = tmp_path / "large.dcm"
        make_large_file(path, 1024 * 1024)
        link, _scp = await start_link(
            scp_max_pdu=65536, max_pdu_length=8192, max_pdu_action="abort"
        )
        sent = await asyncio.to_thread(send_files, link.port, [path], 16384)
        await finish(link)
        [over] = of_kind(read_events(recorder.path), "link.pdu_over_middlebox_limit")
        aborts = [pdu for pdu in sent.received_pdus if isinstance(pdu, A_ABORT_RQ)]

        assert over["fault"] == "max_pdu_length"
        assert over["action"] == "abort"
        assert over["length"] == 65536
        assert [(pdu.source, pdu.reason_diagnostic) for pdu in aborts] == [(2, 0)]
        assert sent.aborted is True

    def test_invalid_proxy_limit(self, recorder: Recorder) -> None:
        """A max_pdu_length of 0 is rejected with the value in the message."""
        with pytest.raises(ValueError, match="not 0"):
            LinkProxy(
                "ct-to-pacs",
                "127.0.0.1",
                104,
                BoundRecorder(recorder, {}),
                AssociationRegistry(),
                max_pdu_length=0,
            )
