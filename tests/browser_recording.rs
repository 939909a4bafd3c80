//! A recorded video call in real Chromium through the real SFU, paused and resumed by the agent, then
//! exported and checked with ffprobe/ffmpeg: the group's policy is `always`; both pages show that the call is
//! recorded; the visitor's microphone is a WebAudio tone whose pitch the test sets per phase (440 Hz
//! recorded, 1000 Hz while paused, 1800 Hz after the resume); the export decodes without an error, lasts as
//! long as the call minus the pause (within a second), holds the 440 Hz and 1800 Hz tones in that order and
//! none of the 1000 Hz one; the file on disk holds no WebM/Opus signature and none of the exported bytes;
//! every change is audited and in the transcript. The host page's `RelayDesk.paymentStarted()` pauses the
//! recording by itself and `paymentEnded()` resumes it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod browser;
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use browser::{Browser, CallServer, WAIT, add_user, console_login, site_key};
use serde_json::json;

/// Replaces the widget's microphone with an oscillator (`window.__tone`), keeping the fake camera.
const TONE_MIC: &str = r#"
const orig = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
navigator.mediaDevices.getUserMedia = async (c) => {
  const s = await orig(c);
  const ctx = new AudioContext({ sampleRate: 48000 });
  const osc = ctx.createOscillator();
  osc.frequency.value = 440;
  const gain = ctx.createGain();
  gain.gain.value = 0.5;
  const dst = ctx.createMediaStreamDestination();
  osc.connect(gain).connect(dst);
  osc.start();
  await ctx.resume();
  window.__tone = osc;
  for (const t of s.getAudioTracks()) { s.removeTrack(t); t.stop(); }
  s.addTrack(dst.stream.getAudioTracks()[0]);
  return s;
};
return true;
"#;

/// Audio packets the visitor's call has sent.
const SENT: &str = r#"
const done = arguments[arguments.length - 1];
const pc = window.relaydeskCall && window.relaydeskCall.pc;
if (!pc) { done(0); return; }
pc.getStats().then((r) => {
  let n = 0;
  r.forEach((s) => { if (s.type === 'outbound-rtp' && s.kind === 'audio') n = Math.max(n, s.packetsSent || 0); });
  done(n);
}, () => done(0));
"#;

/// Waits (bounded) until the visitor has sent `n` more audio packets (20 ms each): a phase of known length
/// of the tone, measured by the browser rather than by a sleep.
async fn send_packets(visitor: &Browser, agent: &Browser, n: u64) {
    let start = visitor.exec_async(SENT, json!([])).await.as_u64().unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        let now = visitor.exec_async(SENT, json!([])).await.as_u64().unwrap();
        if now >= start + n {
            return;
        }
        if Instant::now() >= deadline {
            let call = visitor
                .exec(
                    "const c = window.relaydeskCall; return c ? [c.state, c.pc && c.pc.connectionState] : null",
                    json!([]),
                )
                .await;
            let status = agent
                .exec(
                    "const s = document.querySelector('.pane:not([hidden]) .conv-status'); return s && s.textContent",
                    json!([]),
                )
                .await;
            let typing = visitor
                .exec("return document.getElementById('typing').textContent", json!([]))
                .await;
            panic!(
                "the visitor sent {} of {n} audio packets (from {start}); call {call}, visitor notice {typing}; agent {status}; console: {}",
                now - start,
                visitor.console_log().await
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn set_tone(visitor: &Browser, hz: u32) {
    let ok = visitor
        .exec(
            &format!("window.__tone.frequency.value = {hz}; return window.__tone.frequency.value"),
            json!([]),
        )
        .await;
    assert_eq!(ok.as_f64(), Some(f64::from(hz)));
}

/// Normalised Goertzel power of `hz` in `x` (1.0 for a pure tone at that frequency, near 0 without it).
fn tone_share(x: &[f32], hz: f64, rate: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    let mut energy = 0.0f64;
    for &v in x {
        let v = f64::from(v);
        energy += v * v;
        let s0 = v + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    let power = s1 * s1 + s2 * s2 - coeff * s1 * s2;
    if energy < 1e-9 {
        return 0.0;
    }
    power / (x.len() as f64 / 2.0 * energy)
}

fn run(cmd: &mut Command) -> (Vec<u8>, String) {
    let out = cmd
        .output()
        .expect("run ffmpeg/ffprobe (cargo xtask test installs the Debian package ffmpeg)");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{cmd:?} failed: {err}");
    (out.stdout, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_call_paused_and_resumed_exports_without_the_paused_span() {
    let cs = CallServer::start().await;
    let (admin, origin) = (&cs.admin, &cs.origin);
    let key = site_key(admin, "sales", &[&cs.host.origin]).await;
    let r = admin
        .send_json("PATCH", "/api/v1/admin/groups/sales", &json!({"recording": "always"}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["group"]["recording"], "always");
    add_user(admin, "alice", "Alice", "agent", "sales").await;

    let agent = Browser::start().await;
    console_login(&agent, origin, "alice", "alice-password").await;
    agent
        .click(&agent.find("#presence option[value=available]").await)
        .await;
    let visitor = Browser::start_with(None, &["--autoplay-policy=no-user-gesture-required"]).await;
    let conv = cs.accept(&agent, &visitor, &key, "Alice").await;
    assert_eq!(visitor.exec(TONE_MIC, json!([])).await, json!(true));

    // The agent prepares a video call first: the visitor is told it is recorded before answering.
    agent
        .click(&agent.find(".pane:not([hidden]) .actions button:nth-child(2)").await)
        .await;
    let note = visitor
        .wait_for(
            "the recording notice before joining",
            "const n = document.getElementById('recording-note'); return !n.hidden && n.textContent",
        )
        .await;
    assert_eq!(note, json!("This call is recorded."));
    assert_eq!(
        visitor
            .exec(
                "return window.relaydeskCall === undefined || !window.relaydeskCall.pc",
                json!([])
            )
            .await,
        json!(true),
        "the notice came before the visitor's call existed"
    );
    visitor.click(&visitor.find("#start-video").await).await;

    // Recording starts when the first leg connects: both show the indicator.
    agent
        .wait_for(
            "the agent's recording indicator",
            "const i = document.querySelector('.pane:not([hidden]) .rec-indicator'); return i && !i.hidden",
        )
        .await;
    let t_on = Instant::now();
    visitor
        .wait_for(
            "the visitor's recording indicator",
            "return !document.getElementById('rec-indicator').hidden",
        )
        .await;
    // Phase 1: 3 s of 440 Hz, recorded.
    send_packets(&visitor, &agent, 150).await;

    // Pause: once confirmed, the tone becomes 1000 Hz for 3 s.
    agent
        .click(&agent.find(".pane:not([hidden]) button.rec-toggle").await)
        .await;
    agent
        .wait_for(
            "the pause",
            "const b = document.querySelector('.pane:not([hidden]) button.rec-toggle'); return b.dataset.state === 'paused' && b.textContent === 'Resume recording'",
        )
        .await;
    let t_pause = Instant::now();
    visitor
        .wait_for(
            "the visitor hears of the pause",
            "const n = document.getElementById('recording-note'); return n.dataset.state === 'paused' && document.getElementById('rec-indicator').hidden",
        )
        .await;
    set_tone(&visitor, 1000).await;
    send_packets(&visitor, &agent, 150).await;
    // Back to a recorded tone before resuming: 1000 Hz never reaches the recording.
    set_tone(&visitor, 1800).await;
    agent
        .click(&agent.find(".pane:not([hidden]) button.rec-toggle").await)
        .await;
    agent
        .wait_for(
            "the resume",
            "const b = document.querySelector('.pane:not([hidden]) button.rec-toggle'); return b.dataset.state === 'on'",
        )
        .await;
    let t_resume = Instant::now();
    send_packets(&visitor, &agent, 150).await;

    // The host page's payment step pauses the recording by itself, and its end resumes it.
    let payment = |on: bool| {
        format!(
            "RelayDesk.{}(); return true",
            if on { "paymentStarted" } else { "paymentEnded" }
        )
    };
    visitor.frame(None).await;
    let frame = visitor.find("#relaydesk-frame").await;
    assert_eq!(visitor.exec(&payment(true), json!([])).await, json!(true));
    agent
        .wait_for(
            "the payment pause",
            "const b = document.querySelector('.pane:not([hidden]) button.rec-toggle'); return b.dataset.state === 'paused'",
        )
        .await;
    let t_pay = Instant::now();
    assert_eq!(visitor.exec(&payment(false), json!([])).await, json!(true));
    agent
        .wait_for(
            "the payment resume",
            "const b = document.querySelector('.pane:not([hidden]) button.rec-toggle'); return b.dataset.state === 'on'",
        )
        .await;
    let t_paid = Instant::now();
    visitor.frame(Some(&frame)).await;
    send_packets(&visitor, &agent, 50).await;

    // The visitor hangs up; the agent's call follows; the recording closes.
    visitor.click(&visitor.find("#hangup").await).await;
    let t_end = Instant::now();
    let expected = (t_pause - t_on) + (t_pay - t_resume) + (t_end - t_paid);
    let deadline = Instant::now() + WAIT;
    let listed = loop {
        let r = admin
            .get(&format!("/api/v1/admin/conversations/{conv}/recordings"))
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        if v["recordings"][0]["state"] == "complete" {
            break v;
        }
        assert!(Instant::now() < deadline, "the recording did not close: {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let rec_id = listed["recordings"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(listed["recordings"].as_array().unwrap().len(), 1, "{listed}");

    // The transcript notes every change, in order, as the agent's console shows them.
    let notes = agent
        .wait_for(
            "the recording notes",
            "const n = [...document.querySelectorAll('.pane:not([hidden]) li.msg.system .body')].map((e) => e.textContent); return n.length >= 6 && n",
        )
        .await;
    assert_eq!(
        notes,
        json!([
            "Recording started",
            "Recording paused by Alice",
            "Recording resumed by Alice",
            "Recording paused by the payment page",
            "Recording resumed by the payment page",
            "Recording stopped"
        ])
    );

    // The export (admin API), audited.
    let r = admin
        .get(&format!("/api/v1/admin/conversations/{conv}/recording"))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("video/webm"));
    assert_eq!(r.header("x-recording-complete").as_deref(), Some("true"));
    let webm = r.body.clone();
    assert_eq!(&webm[..4], &[0x1A, 0x45, 0xDF, 0xA3]);
    let file = cs.tmp.path().join("export.webm");
    std::fs::write(&file, &webm).unwrap();

    // At rest: no container or codec signature, none of the exported bytes.
    let stored = std::fs::read(cs.tmp.path().join("recordings").join(format!("{rec_id}.rdrec"))).unwrap();
    for sig in [&b"\x1a\x45\xdf\xa3"[..], b"OpusHead", b"webm", b"A_OPUS", b"V_VP8"] {
        assert!(
            !stored.windows(sig.len()).any(|w| w == sig),
            "signature {sig:?} on disk"
        );
    }
    for at in [webm.len() / 3, webm.len() / 2, 2 * webm.len() / 3, webm.len() - 40] {
        let probe = &webm[at..at + 24];
        assert!(
            !stored.windows(24).any(|w| w == probe),
            "exported bytes at {at} are on disk in the clear"
        );
    }

    // ffprobe/ffmpeg decode it without an error; its duration is the call minus the pause.
    let (out, _) = run(Command::new("ffprobe")
        .args(["-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0"])
        .arg(&file));
    let duration: f64 = String::from_utf8(out).unwrap().trim().parse().unwrap();
    assert!(
        (duration - expected.as_secs_f64()).abs() < 1.0,
        "duration {duration} s, expected {:.2} s (call minus pause)",
        expected.as_secs_f64()
    );
    let (_, err) = run(Command::new("ffmpeg").args(["-v", "error", "-i"]).arg(&file).args([
        "-map",
        "0:v:0",
        "-fps_mode",
        "passthrough",
        "-enc_time_base:v",
        "-1",
        "-f",
        "null",
        "-",
    ]));
    assert!(err.trim().is_empty(), "video decode errors: {err}");
    let (pcm, err) = run(Command::new("ffmpeg")
        .args(["-v", "error", "-i"])
        .arg(&file)
        .args(["-map", "0:a:0", "-ac", "1", "-ar", "48000", "-f", "f32le", "-"]));
    assert!(err.trim().is_empty(), "audio decode errors: {err}");
    let samples: Vec<f32> = pcm
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    // The visitor's audio starts when its leg connects (the recording started with the first leg) and runs to
    // the hang-up, with the paused span cut out.
    let (out, _) = run(Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=start_time",
            "-of",
            "csv=p=0",
        ])
        .arg(&file));
    let start: f64 = String::from_utf8(out).unwrap().trim().parse().unwrap();
    let audio_secs = samples.len() as f64 / 48_000.0;
    assert!(
        (start + audio_secs - expected.as_secs_f64()).abs() < 1.0,
        "visitor audio from {start} s for {audio_secs} s, expected to end at {:.2} s",
        expected.as_secs_f64()
    );
    // Half-second windows: which tone dominates each.
    let mut tones = Vec::new();
    for (i, w) in samples.chunks_exact(24_000).enumerate() {
        let shares = [440.0, 1000.0, 1800.0].map(|f| tone_share(w, f, 48_000.0));
        assert!(shares[1] < 0.05, "window {i} holds the paused tone: {shares:?}");
        if shares[0] > 0.5 {
            tones.push((i, 440));
        } else if shares[2] > 0.5 {
            tones.push((i, 1800));
        }
    }
    let low: Vec<usize> = tones.iter().filter(|t| t.1 == 440).map(|t| t.0).collect();
    let high: Vec<usize> = tones.iter().filter(|t| t.1 == 1800).map(|t| t.0).collect();
    assert!(low.len() >= 3 && high.len() >= 3, "tones by window: {tones:?}");
    assert!(low.iter().max() < high.iter().min(), "440 Hz before 1800 Hz: {tones:?}");

    visitor.quit().await;
    agent.quit().await;
    let tmp = cs.shutdown().await;

    // Audited: start, pause, resume, stop, export.
    let db = rusqlite::Connection::open(tmp.path().join("relaydesk.db")).unwrap();
    let mut stmt = db
        .prepare("SELECT action FROM audit_log WHERE action LIKE 'recording.%' ORDER BY id")
        .unwrap();
    let actions: Vec<String> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    assert_eq!(
        actions,
        [
            "recording.start",
            "recording.pause",
            "recording.resume",
            "recording.pause",
            "recording.resume",
            "recording.stop",
            "recording.export"
        ]
    );
}
