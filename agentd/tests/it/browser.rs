//! The reviewer page in a real browser: headless Chromium driven over WebDriver
//! (Debian's `chromium` and `chromium-driver`, which `.ci/run` installs when missing).
//! Screenshots land in `<target>/tmp/browser/`.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use crate::Env;
use crate::serve::{Api, tokens};

/// WebDriver's Enter key (WebDriver §17.4.2, the "\u{E007}" code point).
const ENTER: &str = "\u{E007}";

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// chromedriver on a free loopback port, and a headless Chromium session through it.
async fn browser() -> (Driver, Client) {
    let chromedriver = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
        .into_iter()
        .find(|path| std::path::Path::new(path).is_file())
        .expect("chromedriver is missing: `apt-get install chromium chromium-driver` (.ci/run does)");
    let port = free_port();
    let driver = Driver(
        Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,1600"]
        }),
    );
    let started = Instant::now();
    loop {
        // WebDriver on loopback is plain HTTP: no TLS stack is built for it.
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return (driver, client),
            Err(error) if started.elapsed() < Duration::from_secs(20) => {
                let _ = error;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(error) => panic!("no WebDriver session: {error}"),
        }
    }
}

async fn screenshot(client: &Client, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    std::fs::create_dir_all(&dir).unwrap();
    let png = client.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

async fn text_of(client: &Client, css: &str) -> String {
    client.find(Locator::Css(css)).await.unwrap().text().await.unwrap()
}

/// Waits until the element at `css` shows `needle`.
async fn wait_for_text(client: &Client, css: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
            && text.contains(needle)
        {
            return text;
        }
        assert!(Instant::now() < deadline, "`{css}` never showed `{needle}`");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn press_enter_on(client: &Client, css: &str) {
    let element = client.wait().for_element(Locator::Css(css)).await.unwrap();
    element.send_keys(ENTER).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reviewer_signs_in_sees_a_request_live_modifies_it_approves_it_and_the_run_completes() {
    let env = Env::new();
    let (alice, bob, eve) = tokens(&env);
    let served = env.serve(&[]);
    let api = Api::of(&served);
    let (_driver, client) = browser().await;

    // Sign in with the keyboard only: type the token, press Enter.
    client.goto(&served.url("/")).await.unwrap();
    let token_field = client.wait().for_element(Locator::Id("token")).await.unwrap();
    token_field.send_keys(&bob).await.unwrap();
    token_field.send_keys(ENTER).await.unwrap();
    wait_for_text(&client, "#pending", "Nothing waits for you").await;
    let url = client.current_url().await.unwrap();
    assert!(
        !url.as_str().contains(&bob[..20]),
        "the token leaked into the URL {url}"
    );

    // Requests arrive while the page is open; another tenant's never shows.
    let hostile = "<img src=x onerror=\"document.title='pwned'\"><script>document.title='pwned'</script>";
    let submit = |token: String, title: &'static str| {
        let api = api.clone();
        async move {
            let body = json!({ "skill": "publish-report", "input": { "title": title, "body": hostile, "path": "reports/b.md" } });
            api.post("/v1/runs", &token, &body).await
        }
    };
    let theirs = submit(eve.clone(), "Globex secret").await;
    assert_eq!(theirs.0, 202, "{}", theirs.2);
    let ours = submit(alice.clone(), "Board memo").await;
    assert_eq!(ours.0, 202, "{}", ours.2);
    let approval = ours.2["step"]["approval_id"].as_i64().unwrap();
    let run_id = ours.2["run_id"].as_str().unwrap().to_owned();
    let pending = wait_for_text(&client, "#pending", &format!("#{approval} publish-report")).await;
    assert!(!pending.contains("Globex"), "{pending}");
    let listed: Value = client
        .execute(
            "return Array.from(document.querySelectorAll('[data-approval]')).map(b => b.dataset.approval)",
            vec![],
        )
        .await
        .unwrap();
    assert!(
        !listed
            .to_string()
            .contains(&theirs.2["step"]["approval_id"].to_string()),
        "{listed}"
    );
    screenshot(&client, "1-queue").await;

    // Open it with the keyboard: the input shows as text, runs no script, adds no element.
    press_enter_on(&client, &format!("button[data-approval='{approval}']")).await;
    let shown = wait_for_text(&client, "#input", "onerror").await;
    assert!(shown.contains(hostile.replace('"', "\\\"").as_str()), "{shown}");
    let facts = text_of(&client, "#facts").await;
    for expected in [
        "publish-report",
        "alice",
        "Risk tier",
        "0 of 1 reviewer approvals",
        "expires in",
    ] {
        assert!(facts.contains(expected), "`{expected}` missing from {facts}");
    }
    let policy = text_of(&client, "#reasons").await;
    assert!(policy.contains("effectful-skills-need-review"), "{policy}");
    let injected: Value = client
        .execute(
            "return [document.querySelectorAll('img, script:not([src])').length, document.title]",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, json!([0, "agentd — approvals"]));
    // Every control has an accessible name.
    let unlabelled: Value = client
        .execute(
            "return Array.from(document.querySelectorAll('input, textarea')).filter(e => !document.querySelector(`label[for=\"${e.id}\"]`)).map(e => e.id)
              .concat(Array.from(document.querySelectorAll('button')).filter(b => !b.textContent.trim()).map(b => b.id))",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(unlabelled, json!([]));
    screenshot(&client, "2-detail").await;

    // Modify: edit the title; the diff shows the change; submit.
    press_enter_on(&client, "#modify-toggle").await;
    let edited = client.find(Locator::Id("edited")).await.unwrap();
    edited.clear().await.unwrap();
    edited
        .send_keys(
            &json!({ "title": "Board memo (redacted)", "body": "nothing to see", "path": "reports/b.md" }).to_string(),
        )
        .await
        .unwrap();
    let diff = wait_for_text(&client, "#diff", "+   \"title\": \"Board memo (redacted)\"").await;
    assert!(diff.contains("-   \"title\": \"Board memo\""), "{diff}");
    client
        .find(Locator::Id("comment"))
        .await
        .unwrap()
        .send_keys("no markup in reports")
        .await
        .unwrap();
    screenshot(&client, "3-modify").await;
    press_enter_on(&client, "#modify").await;
    wait_for_text(&client, "#result", "is modified").await;
    wait_for_text(&client, "#result", "awaiting-approval").await;

    // The edited step is governed again and waits for a new approval: approve that one.
    press_enter_on(&client, "#back").await;
    let queue = api.get("/v1/approvals?status=pending", &bob).await;
    let child = queue
        .2
        .as_array()
        .unwrap()
        .iter()
        .find(|request| request["parent_id"] == approval)
        .expect("no follow-up request")["id"]
        .as_i64()
        .unwrap();
    wait_for_text(&client, "#pending", &format!("#{child} publish-report")).await;
    press_enter_on(&client, &format!("button[data-approval='{child}']")).await;
    let shown = wait_for_text(&client, "#input", "redacted").await;
    assert!(!shown.contains("onerror"), "{shown}");
    press_enter_on(&client, "#approve").await;
    let result = wait_for_text(&client, "#result", "completed").await;
    assert!(result.contains(&run_id), "{result}");
    screenshot(&client, "4-approved").await;
    wait_for_text(&client, "#audit", "audit log intact").await;

    let run = api.get(&format!("/v1/runs/{run_id}"), &alice).await;
    assert_eq!(run.2["run"]["state"], "succeeded", "{}", run.2);
    client.close().await.unwrap();
}
