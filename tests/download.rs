//! `train --download` against a local HTTP server: a bad archive or a file that is not
//! enwik8 is refused with one line and leaves nothing at the destination.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;

/// Serves `body` once over HTTP/1.1 on a free loopback port; returns the URL.
fn serve_once(body: Vec<u8>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/enwik8.zip", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        if let Ok((mut stream, _)) = listener.accept() {
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            let header = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = stream.write_all(header.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    url
}

fn zip_with_enwik8(content: &[u8]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    writer.start_file("enwik8", zip::write::SimpleFileOptions::default()).unwrap();
    writer.write_all(content).unwrap();
    writer.finish().unwrap().into_inner()
}

fn download(url: &str, name: &str) -> (String, PathBuf) {
    // The destination's folder does not exist: the download makes it.
    let dir = common::fresh_path(name);
    let dest = dir.join("enwik8");
    let args = ["train", "--device", "cpu", "--task", "enwik8", "--download", "--data", dest.to_str().unwrap()];
    let out = common::reformer_with_env(&args, &[("REFORMER_ENWIK8_URL", url)]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!dest.exists(), "nothing may be left at the destination");
    let leftovers: Vec<_> = std::fs::read_dir(&dir).map(|d| d.flatten().collect()).unwrap_or_default();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    let _ = std::fs::remove_dir_all(&dir);
    (stderr, dest)
}

fn error_line(stderr: &str) -> String {
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0].to_string()
}

#[test]
fn a_file_that_is_not_enwik8_is_refused() {
    let (stderr, _) = download(&serve_once(zip_with_enwik8(b"not the real thing")), "wrong");
    assert!(error_line(&stderr).contains("not 100000000 bytes and md5 a1fa5ffddb56f4953e226637dabbb36a"), "{stderr}");
}

#[test]
fn a_response_that_is_not_a_zip_is_refused() {
    let (stderr, _) = download(&serve_once(b"<html>moved</html>".to_vec()), "notzip");
    assert!(error_line(&stderr).contains("not a zip archive"), "{stderr}");
}

#[test]
fn an_unreachable_server_says_how_to_get_the_file() {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port(); // closed again
    let (stderr, _) = download(&format!("http://127.0.0.1:{port}/enwik8.zip"), "offline");
    assert!(error_line(&stderr).contains("cannot download"), "{stderr}");
}
