use super::*;

#[test]
fn content_must_match_its_type_and_the_policy() {
    let p = FilesConfig::default();
    assert_eq!(check_content(&p, "image/png", b"\x89PNG\r\n\x1a\n...."), Ok(()));
    assert_eq!(
        check_content(&p, "image/png", b"MZ\x90\x00 a program"),
        Err(ContentError::Mismatch)
    );
    assert_eq!(check_content(&p, "image/jpeg", &[0xFF, 0xD8, 0xFF, 0xE0]), Ok(()));
    assert_eq!(check_content(&p, "application/pdf", b"%PDF-1.7"), Ok(()));
    assert_eq!(
        check_content(&p, "application/pdf", b"<html>"),
        Err(ContentError::Mismatch)
    );
    assert_eq!(check_content(&p, "image/webp", b"RIFF\0\0\0\0WEBPVP8 "), Ok(()));
    assert_eq!(check_content(&p, "text/plain", b"hello"), Ok(()));
    assert_eq!(check_content(&p, "text/plain", b"he\0llo"), Err(ContentError::Mismatch));
    assert_eq!(
        check_content(&p, "text/plain", &[0xC3, 0x28]),
        Err(ContentError::Mismatch)
    );
    assert_eq!(
        check_content(&p, "text/html", b"<script>"),
        Err(ContentError::TypeNotAllowed)
    );
    // Anything-at-all and SVG (script inside an image) are off by default, SVG even under `image/*`.
    assert_eq!(
        check_content(&p, "application/octet-stream", &[1, 2, 3]),
        Err(ContentError::TypeNotAllowed)
    );
    assert_eq!(
        check_content(&p, "image/svg+xml", b"<svg onload=alert(1)>"),
        Err(ContentError::TypeNotAllowed)
    );
    let family = FilesConfig {
        allowed_types: vec!["image/*".into()],
        ..FilesConfig::default()
    };
    assert_eq!(
        check_content(&family, "image/svg+xml", b"<svg/>"),
        Err(ContentError::TypeNotAllowed)
    );
    assert_eq!(check_content(&family, "image/bmp", b"BM"), Ok(()));
    let named = FilesConfig {
        allowed_types: vec!["image/svg+xml".into(), "application/octet-stream".into()],
        ..FilesConfig::default()
    };
    assert_eq!(check_content(&named, "image/svg+xml", b"<svg/>"), Ok(()));
    assert_eq!(check_content(&named, "application/octet-stream", &[1, 2, 3]), Ok(()));
    assert_eq!(check_content(&p, "image/png", b""), Err(ContentError::Empty));
    let strict = FilesConfig {
        allowed_types: vec!["application/pdf".into()],
        ..FilesConfig::default()
    };
    assert_eq!(
        check_content(&strict, "image/png", b"\x89PNG\r\n\x1a\n"),
        Err(ContentError::TypeNotAllowed)
    );
}

#[test]
fn media_types_and_names_are_cleaned() {
    assert_eq!(media_type(Some("Image/PNG; charset=x")), Ok("image/png".into()));
    assert_eq!(media_type(None), Ok("application/octet-stream".into()));
    assert_eq!(media_type(Some("png")), Err(ContentError::BadType));
    assert_eq!(media_type(Some("a/b/c")), Err(ContentError::BadType));
    assert_eq!(media_type(Some("image/p ng")), Err(ContentError::BadType));
    assert_eq!(clean_name("C:\\Users\\me\\statement.pdf"), "statement.pdf");
    assert_eq!(clean_name("../../etc/passwd"), "passwd");
    assert_eq!(clean_name("..hidden"), "hidden");
    assert_eq!(clean_name("a\u{0}b\nc.txt"), "abc.txt");
    assert_eq!(clean_name("   "), "file");
    assert_eq!(clean_name(&"é".repeat(300)).len(), 200);
}

#[test]
fn format_and_bidi_characters_never_survive_in_a_name() {
    // U+202E shows `invoice\u{202E}fdp.exe` as `invoiceexe.pdf`: the real extension is `.exe`.
    assert_eq!(clean_name("invoice\u{202E}fdp.exe"), "invoicefdp.exe");
    assert_eq!(
        clean_name("\u{2066}a\u{2069}\u{200B}b\u{200D}c\u{2060}d\u{FEFF}e\u{00AD}f.txt"),
        "abcdef.txt"
    );
    assert_eq!(
        clean_name("\u{202A}\u{202B}\u{202C}\u{202D}\u{200E}\u{200F}\u{061C}"),
        "file"
    );
    assert_eq!(clean_name("tag\u{E0041}\u{E007F}.pdf"), "tag.pdf");
    // Ordinary letters of any script stay.
    assert_eq!(clean_name("قائمة résumé 履歴書.pdf"), "قائمة résumé 履歴書.pdf");
}

#[test]
fn names_need_an_allowed_extension_that_agrees_with_the_type() {
    let p = FilesConfig::default();
    assert_eq!(
        check_name(&p, "statement.pdf", "application/pdf"),
        Ok("statement.pdf".into())
    );
    assert_eq!(check_name(&p, "Photo.JPG", "image/jpeg"), Ok("Photo.JPG".into()));
    assert_eq!(check_name(&p, "note", "text/plain"), Ok("note.txt".into()));
    assert_eq!(check_name(&p, ".pdf", "application/pdf"), Ok(".pdf.pdf".into()));
    assert_eq!(
        check_name(&p, "setup.exe", "application/pdf"),
        Err(ContentError::ExtensionNotAllowed)
    );
    assert_eq!(
        check_name(&p, "invoicefdp.exe", "application/pdf"),
        Err(ContentError::ExtensionNotAllowed)
    );
    assert_eq!(check_name(&p, "photo.pdf", "image/png"), Err(ContentError::Mismatch));
    assert_eq!(
        check_name(&p, "page.html", "text/plain"),
        Err(ContentError::ExtensionNotAllowed)
    );
    assert_eq!(
        check_name(&p, "x.svg", "image/svg+xml"),
        Err(ContentError::ExtensionNotAllowed)
    );
    // An operator's own extension is accepted with any allowed type; a type without a usual extension
    // needs a name that has one.
    let own = FilesConfig {
        allowed_extensions: vec!["log".into()],
        ..FilesConfig::default()
    };
    assert_eq!(check_name(&own, "app.log", "text/plain"), Ok("app.log".into()));
    assert_eq!(
        check_name(&own, "app", "text/plain"),
        Err(ContentError::ExtensionNotAllowed)
    );
    assert_eq!(
        check_name(&p, "blob", "application/octet-stream"),
        Err(ContentError::ExtensionNotAllowed)
    );
}

#[test]
fn only_our_ids_reach_the_file_system() {
    let d = Path::new("/x");
    assert!(file_path(d, "0123456789abcdef0123456789abcdef").is_some());
    assert!(file_path(d, "../../../../etc/passwd").is_none());
    assert!(file_path(d, "0123456789ABCDEF0123456789ABCDEF").is_none());
    assert!(file_path(d, "0123").is_none());
}

#[test]
fn limits_are_validated() {
    assert!(FilesConfig::default().validate().is_ok());
    let big = FilesConfig {
        max_bytes: 65 * 1024 * 1024,
        ..FilesConfig::default()
    };
    assert!(big.validate().is_err());
    let bad = FilesConfig {
        allowed_types: vec!["png".into()],
        ..FilesConfig::default()
    };
    assert!(bad.validate().is_err());
    for ext in [".pdf", "PDF", "", "a/b", "verylongextension"] {
        let bad = FilesConfig {
            allowed_extensions: vec![ext.into()],
            ..FilesConfig::default()
        };
        assert!(bad.validate().is_err(), "{ext:?}");
    }
}
