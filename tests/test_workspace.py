"""The workspace folder (`hdap_engine.infra.workspace`): uploads stored by content, fresh bundle folders."""

from __future__ import annotations


def test_uploads_are_stored_by_content_and_bundle_folders_are_fresh():
    from hdap_engine.infra.workspace import home, new_bundle_dir, save_upload, upload_label

    a = save_upload(b"weights", "../../my model.pt", "weights")
    assert a.parent == home() / "weights" and a.name.endswith("-my_model.pt")
    assert save_upload(b"weights", "../../my model.pt", "weights") == a
    assert save_upload(b"other", "my model.pt", "weights") != a
    assert a.read_bytes() == b"weights"
    assert upload_label(a) == upload_label(str(a)) == "my_model.pt"  # as its user knows it
    assert upload_label("digits") == "digits" and upload_label(None) == "none"
    d1, d2 = new_bundle_dir("resnet56 hdap"), new_bundle_dir("resnet56 hdap")
    assert d1 != d2 and d1.parent == home() / "bundles" and "resnet56-hdap" in d1.name

