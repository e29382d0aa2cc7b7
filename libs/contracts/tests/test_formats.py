"""The formats table: what the gateway accepts and what the processor decodes agree by construction."""

from rawdrive_contracts.formats import (
    FAMILY_KINDS,
    FILE_TYPES,
    GENERIC_RAW_TYPES,
    MIB,
    RAW_FAMILIES,
    declared_families,
    essence,
    extension_of,
)


def test_recent_raw_formats_cr3_and_dng_are_accepted_as_photos_of_their_own_family():
    assert FILE_TYPES["cr3"].families == ("cr3",) and FILE_TYPES["cr3"].kind == "photo"
    assert FILE_TYPES["dng"].families == ("dng",) and "image/x-adobe-dng" in FILE_TYPES["dng"].mime_types


def test_every_raw_extension_accepts_the_generic_types_browsers_send_and_no_other_does():
    for extension, file_type in FILE_TYPES.items():
        is_raw = set(file_type.families) <= set(RAW_FAMILIES)
        assert (GENERIC_RAW_TYPES <= file_type.mime_types) == is_raw, extension


def test_a_family_has_one_kind_and_the_kind_sets_the_size_limit():
    assert FAMILY_KINDS["isobmff"] == "video" and FAMILY_KINDS["pdf"] == "document"
    assert FILE_TYPES["mov"].max_bytes == 500 * MIB and FILE_TYPES["jpg"].max_bytes == 100 * MIB


def test_a_specific_type_declares_its_families_whatever_the_name():
    assert declared_families("Image/JPEG; charset=binary", "a.jpg") == {"jpeg"}
    assert declared_families("video/quicktime", "a.mov") == {"isobmff"}
    assert declared_families("image/heic", "photo") == {"heif"}


def test_a_generic_type_defers_to_a_raw_extension_and_declares_nothing_for_others():
    assert declared_families("application/octet-stream", "IMG_1.CR3") == {"cr3"}
    assert declared_families("image/x-raw", "x.raw") == set(RAW_FAMILIES)
    assert declared_families("application/octet-stream", "a.jpg") == frozenset()


def test_extension_and_essence_ignore_case_parameters_and_leading_dots():
    assert extension_of("Photo.JPG") == "jpg" and extension_of(".bashrc") == "" and extension_of("x") == ""
    assert essence(" Image/PNG ; q=1") == "image/png"
