"""Progress lines: one per interval, and the end once."""

from vaepipe.progress import Progress


def test_the_end_is_logged_once(caplog):
    with caplog.at_level("INFO", logger="vaepipe"):
        p = Progress("ingest", 4, unit="files", every_s=0)  # every update logs
        for _ in range(4):
            p.update()
        p.close()
        q = Progress("embed", 4, every_s=3600)  # no update logs: close() logs the end
        q.update(4)
        q.close()
    assert caplog.text.count("ingest [") == 4 and caplog.text.count("100% 4/4 files") == 1
    assert caplog.text.count("embed [") == 1 and "100% 4/4 images" in caplog.text
