//! The web UI in a real browser: headless Chromium driven through ChromeDriver (WebDriver). A
//! person opens the UI, searches the streams, opens one and an event of it, appends an event
//! through the form in one tab, and sees it arrive in the live tail of `$all` in another.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`/usr/bin/chromium`, `/usr/bin/chromedriver`;
//! `.ci/run` installs them). Without them the test fails under `CI=true` and is skipped, with the
//! reason printed, elsewhere.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use common::Counting;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{events, start, start_with_client};
use factum_core::{Direction, EventStore, StreamName};
use factum_projections::{Projector, ReadModel, SqliteReadModel};
use factum_server::auth::Auth;
use serde_json::{Value, json};

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A ChromeDriver process and one browser session in it.
struct Browser {
    driver: Child,
    url: String,
    session: String,
    http: reqwest::Client,
}

impl Browser {
    async fn start() -> Option<Browser> {
        Browser::start_with(&[]).await
    }

    /// A browser with more command-line switches (a dark system theme, say).
    async fn start_with(extra: &[&str]) -> Option<Browser> {
        let missing: Vec<&str> = [CHROMEDRIVER, CHROMIUM]
            .into_iter()
            .filter(|p| !std::path::Path::new(p).exists())
            .collect();
        if !missing.is_empty() {
            let reason = format!(
                "{} missing (apt-get install chromium chromium-driver)",
                missing.join(" and ")
            );
            assert!(
                std::env::var("CI").is_err(),
                "browser test under CI: {reason}"
            );
            eprintln!("skipping the browser test: {reason}");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        loop {
            if let Ok(response) = http.get(format!("{url}/status")).send().await
                && response.status().is_success()
            {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut browser = Browser {
            driver,
            url,
            session: String::new(),
            http,
        };
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ];
        args.extend_from_slice(extra);
        let session = browser
            .call(
                reqwest::Method::POST,
                "/session",
                json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
                    "binary": CHROMIUM,
                    "args": args,
                }}}}),
            )
            .await;
        browser.session = session["sessionId"].as_str().unwrap().to_owned();
        Some(browser)
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.url));
        if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
            request = request.json(&body);
        }
        let response: Value = request.send().await.unwrap().json().await.unwrap();
        assert!(
            response["value"]["error"].is_null(),
            "{method} {path}: {response}"
        );
        response["value"].clone()
    }

    async fn session(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
            .await
    }

    async fn open(&self, url: &str) {
        self.session(reqwest::Method::POST, "/url", json!({"url": url}))
            .await;
    }

    /// Runs JavaScript in the page and returns what it returns.
    async fn script(&self, script: &str) -> Value {
        self.session(
            reqwest::Method::POST,
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// Waits (up to 10 s) until `script` returns something truthy, and returns it.
    async fn wait_for(&self, what: &str, script: &str) -> Value {
        let started = Instant::now();
        loop {
            let value = self.script(script).await;
            let truthy = match &value {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                _ => true,
            };
            if truthy {
                return value;
            }
            if started.elapsed() > Duration::from_secs(10) {
                let page = self.script("return document.body.innerText").await;
                panic!("waited 10 s for {what}; the page shows:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn find(&self, css: &str) -> String {
        let found = self
            .session(
                reqwest::Method::POST,
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        found[ELEMENT].as_str().unwrap().to_owned()
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.session(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            json!({}),
        )
        .await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.session(
            reqwest::Method::POST,
            &format!("/element/{element}/clear"),
            json!({}),
        )
        .await;
        self.session(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            json!({"text": text}),
        )
        .await;
    }

    /// Opens a new tab and switches to it; returns the handle of the tab left.
    async fn new_tab(&self) -> String {
        let old = self
            .session(reqwest::Method::GET, "/window", json!({}))
            .await;
        let tab = self
            .session(reqwest::Method::POST, "/window/new", json!({"type": "tab"}))
            .await;
        self.switch_to(tab["handle"].as_str().unwrap()).await;
        old.as_str().unwrap().to_owned()
    }

    /// Saves a screenshot of the page as `target/ui-screenshots/{name}.png`.
    async fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let png = self
            .session(reqwest::Method::GET, "/screenshot", json!({}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ui-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// Sets the window's size, as a laptop's or a phone's screen.
    async fn resize(&self, width: u32, height: u32) {
        self.session(
            reqwest::Method::POST,
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// Uses `token` from now on, as a person types it into the token field.
    async fn use_token(&self, token: &str) {
        self.script(&format!(
            "localStorage.setItem('factum-token', '{token}'); \
             document.getElementById('token').value = '{token}'; return true"
        ))
        .await;
    }

    async fn switch_to(&self, handle: &str) {
        self.session(reqwest::Method::POST, "/window", json!({"handle": handle}))
            .await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_browses_streams_appends_through_the_form_and_sees_it_live() {
    let server = start().await;
    server
        .append("order-1", None, events(3, "OrderPlaced"))
        .await;
    server
        .append(
            "cart-7",
            None,
            json!([{"type": "ItemAdded", "data": {"sku": "pear"},
                    "metadata": {"$correlationId": "req-42", "$causationId": "req-42"}}]),
        )
        .await;
    let Some(browser) = Browser::start().await else {
        server.stop().await;
        return;
    };

    // The streams page lists them; a search by prefix narrows them.
    browser.open(&format!("{}/#/streams", server.url)).await;
    browser
        .wait_for(
            "the stream list",
            "return document.querySelector('#streams a[href=\"#/stream/order-1\"]')",
        )
        .await;
    browser.type_into("input[name=prefix]", "cart-").await;
    browser.click("form.inline button").await;
    browser
        .wait_for(
            "the search result",
            "const rows = document.querySelectorAll('#streams tbody tr'); \
             return rows.length === 1 && rows[0].innerText.includes('cart-7')",
        )
        .await;

    // Open a stream: its events, with their JSON shown.
    browser.click("#streams a[href=\"#/stream/cart-7\"]").await;
    let text = browser
        .wait_for(
            "the stream's events",
            "const t = document.querySelector('table.events tbody'); return t && t.innerText",
        )
        .await;
    assert!(
        text.as_str().unwrap().contains("\"sku\": \"pear\""),
        "{text}"
    );

    // One event's detail links its correlation to the events that share it.
    browser
        .click("table.events tbody a[href^=\"#/event/\"]")
        .await;
    browser
        .wait_for(
            "the event's detail",
            "const d = document.querySelector('#event'); return d && d.innerText.includes('req-42')",
        )
        .await;
    browser.click("#event a[href=\"#/search?q=req-42\"]").await;
    browser
        .wait_for(
            "the related events",
            "const rows = document.querySelectorAll('#search-results table.events tbody tr'); \
             return rows.length === 1 && rows[0].innerText.includes('cart-7')",
        )
        .await;

    // Follow $all live in one tab...
    browser.open(&format!("{}/#/live", server.url)).await;
    browser
        .wait_for(
            "the live tail",
            "const s = document.querySelector('#live-status'); \
             return s && s.innerText.startsWith('following') \
                 && document.querySelectorAll('table.events tbody tr').length === 4",
        )
        .await;
    let live = browser.new_tab().await;

    // ...append through the form in another...
    browser.open(&format!("{}/#/append", server.url)).await;
    browser
        .wait_for("the form", "return document.querySelector('#append')")
        .await;
    browser.type_into("#f-stream", "order-2").await;
    browser.type_into("#f-type", "OrderShipped").await;
    browser.type_into("#f-expected", "no-stream").await;
    browser
        .type_into("#f-data", r#"{"carrier": "DHL", "parcels": 2}"#)
        .await;
    browser.click("#append button").await;
    let result = browser
        .wait_for(
            "the append's answer",
            "const r = document.querySelector('#append-result'); return r && r.innerText",
        )
        .await;
    assert!(
        result.as_str().unwrap().contains("Appended at revision 0"),
        "{result}"
    );
    // Bad input is refused with the server's reason, and nothing is written.
    browser.type_into("#f-expected", "no-stream").await;
    browser.click("#append button").await;
    let refused = browser
        .wait_for(
            "the conflict",
            "const r = document.querySelector('#append-result.error'); return r && r.innerText",
        )
        .await;
    assert!(refused.as_str().unwrap().starts_with("409"), "{refused}");

    // ...and see it arrive in the live tail.
    browser.switch_to(&live).await;
    let row = browser
        .wait_for(
            "the new event in the live tail",
            "const r = document.querySelector('table.events tbody tr[data-position=\"4\"]'); \
             return r && r.innerText",
        )
        .await;
    let row = row.as_str().unwrap();
    assert!(
        row.contains("order-2") && row.contains("OrderShipped") && row.contains("DHL"),
        "{row}"
    );
    assert_eq!(
        server.get("/health").await.1["head"],
        5,
        "one event was written"
    );

    // Processors, projections and groups: none here yet, and the page says so.
    browser.open(&format!("{}/#/consumers", server.url)).await;
    browser
        .wait_for(
            "the moving parts page",
            "return document.body.innerText.includes('Nothing has a place in this store yet')",
        )
        .await;
    // A persistent subscription group with a parked message: listed, described, replayed.
    let created = server
        .client
        .post(server.at("/subscriptions/order-1/mailer"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), reqwest::StatusCode::CREATED);
    let consumer = server
        .client
        .get(server.at("/subscriptions/order-1/mailer/messages?capacity=1"))
        .send()
        .await
        .unwrap();
    let mut frames = consumer.bytes_stream();
    let mut text = String::new();
    let id = loop {
        use futures::StreamExt as _;
        let chunk = tokio::time::timeout(Duration::from_secs(10), frames.next())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        if let Some(id) = text.lines().find_map(|l| l.strip_prefix("id: ")) {
            break id.to_owned();
        }
    };
    let nacked = server
        .client
        .post(server.at("/subscriptions/order-1/mailer/nack"))
        .json(&json!({"ids": [id], "action": "park", "reason": "no address"}))
        .send()
        .await
        .unwrap();
    assert_eq!(nacked.status(), reqwest::StatusCode::OK);
    drop(frames);
    browser
        .open(&format!("{}/#/subscriptions", server.url))
        .await;
    let row = browser
        .wait_for(
            "the group in the list",
            "const r = document.querySelector('#groups tr[data-group=\"order-1::mailer\"]'); \
             return r && r.innerText.includes('mailer') && r.innerText",
        )
        .await;
    assert!(row.as_str().unwrap().contains("order-1"), "{row}");
    browser
        .click("#groups a[href=\"#/subscription/order-1/mailer\"]")
        .await;
    browser
        .wait_for(
            "one parked message on the group's page",
            "const r = document.querySelector('#group tr[data-fact=\"parked\"] td'); \
             return r && r.innerText === '1'",
        )
        .await;
    browser.click("#replay").await;
    browser
        .wait_for(
            "the replay started",
            "const r = document.getElementById('replay-result'); \
             return r && r.innerText.includes('1 parked message')",
        )
        .await;
    browser
        .session(reqwest::Method::DELETE, "", json!({}))
        .await;
    server.stop().await;
}

const TOKENS: &str = r#"
[[token]]
name = "viewer"
secret = "viewer-0123456789"
read = [""]

[[token]]
name = "operator"
secret = "operator-0123456789"
admin = [""]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_moves_search_finds_events_and_only_an_admin_acts() {
    let dir = tempfile::tempdir().unwrap();
    let read_model: Arc<dyn ReadModel> = Arc::new(
        SqliteReadModel::open(dir.path().join("read.db"))
            .await
            .unwrap(),
    );
    let server = start_with_client(
        factum_server::Config {
            auth: Some(Arc::new(Auth::from_toml(TOKENS).unwrap())),
            read_model: Some(read_model.clone()),
            ..factum_server::Config::default()
        },
        "http",
        common::bearer("operator-0123456789"),
    )
    .await;
    // One request's events, sharing its correlation id, among others.
    server
        .append("order-10", None, events(5, "OrderPlaced"))
        .await;
    let (status, _) = server
        .append(
            "order-9",
            None,
            json!([
                {"type": "OrderPlaced", "data": {"total_cents": 1200, "lines": [{"sku": "pear"}]},
                 "metadata": {"$correlationId": "req-77", "$causationId": "req-77"}},
                {"type": "OrderPaid", "data": {"by": "card"},
                 "metadata": {"$correlationId": "req-77", "$causationId": "cmd-2"}},
            ]),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED);
    server
        .append("order-11", None, events(3, "OrderPlaced"))
        .await;
    let store: Arc<dyn EventStore> = Arc::new(server.store.clone());
    let placed = store
        .read_stream(
            &StreamName::user("order-9").unwrap(),
            0,
            Direction::Forwards,
            1,
        )
        .await
        .unwrap()
        .remove(0);
    // A projection that has applied only the first two events: it is behind.
    Projector::new(store.clone(), read_model.clone(), Counting)
        .run_until(2)
        .await
        .unwrap();
    let Some(browser) = Browser::start().await else {
        server.stop().await;
        return;
    };

    // A writer appends all along.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (writing, client, url) = (writing.clone(), server.client.clone(), server.url.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while writing.load(Ordering::Relaxed) {
                let response = client
                    .post(format!("{url}/streams/tick-{}", n % 7))
                    .json(&events(3, "Ticked"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), reqwest::StatusCode::CREATED);
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // The UI opens on the dashboard: its charts draw, and move.
    browser.open(&server.url).await;
    browser.use_token("viewer-0123456789").await;
    browser.open(&format!("{}/#/dashboard", server.url)).await;
    let chart = "document.querySelector('svg[data-chart=\"events\"]').dataset";
    browser
        .wait_for(
            "the events chart with a rate above 0",
            &format!("const d = {chart}; return Number(d.points) >= 2 && Number(d.last) > 0"),
        )
        .await;
    let first = browser.script(&format!("return {chart}.lastT")).await;
    browser
        .wait_for(
            "the chart to move",
            &format!("return {chart}.lastT !== {first}"),
        )
        .await;
    for other in ["appends", "latency", "reads", "subscribers"] {
        browser
            .wait_for(
                &format!("the {other} chart"),
                &format!(
                    "return Number(document.querySelector('svg[data-chart=\"{other}\"]').dataset.points) >= 1"
                ),
            )
            .await;
    }
    let cards = browser
        .script("return document.querySelector('.cards').innerText")
        .await;
    let cards = cards.as_str().unwrap();
    assert!(cards.contains("embedded"), "{cards}");
    assert!(cards.contains("KiB") || cards.contains("MiB"), "{cards}");
    // The projection is behind, and the dashboard says so.
    let lag = "document.querySelector('#lag tr[data-consumer=\"projection:counting\"]')";
    browser
        .wait_for(
            "the projection behind",
            &format!("const r = {lag}; return r && r.classList.contains('behind') && Number(r.dataset.behind) > 0"),
        )
        .await;
    browser.screenshot("dashboard").await;
    browser.resize(390, 844).await;
    browser.screenshot("dashboard-phone").await;
    browser.resize(1280, 900).await;

    // It catches up once its projector has run, and the dashboard shows that too.
    writing.store(false, Ordering::Relaxed);
    writer.await.unwrap();
    Projector::new(store.clone(), read_model.clone(), Counting)
        .run_until(store.head())
        .await
        .unwrap();
    browser
        .wait_for(
            "the projection caught up",
            &format!("const r = {lag}; return r && r.dataset.behind === '0' && !r.classList.contains('behind')"),
        )
        .await;

    // Search by event id: the server finds the one event.
    browser
        .open(&format!("{}/#/search?q={}", server.url, placed.id))
        .await;
    let rows = "document.querySelectorAll('#search-results table.events tbody tr')";
    let found = browser
        .wait_for(
            "the event found by its id",
            &format!("const r = {rows}; return r.length === 1 && r[0].innerText"),
        )
        .await;
    assert!(found.as_str().unwrap().contains("order-9"), "{found}");
    // By correlation id: the request's two events.
    browser
        .open(&format!("{}/#/search?q=req-77", server.url))
        .await;
    browser
        .wait_for(
            "the request's events",
            &format!("const r = {rows}; return r.length === 2 && [...r].every(x => x.innerText.includes('order-9'))"),
        )
        .await;
    browser.screenshot("search").await;
    // The event itself: its fields laid out, its correlation a link, copy buttons.
    browser
        .open(&format!("{}/#/event/{}", server.url, placed.position))
        .await;
    let detail = browser
        .wait_for(
            "the event's detail",
            "const d = document.querySelector('#event-data'); return d && d.innerText",
        )
        .await;
    assert!(detail.as_str().unwrap().contains("total_cents"), "{detail}");
    browser
        .wait_for(
            "the correlation link and copy buttons",
            "return document.querySelector('#event a[href=\"#/search?q=req-77\"]') \
                 && document.querySelectorAll('button.copy').length >= 4",
        )
        .await;
    browser.screenshot("event").await;

    // An operator's action: refused without an admin token, done with one.
    browser.open(&format!("{}/#/consumers", server.url)).await;
    let rebuild = "document.querySelector('#parts tr[data-consumer=\"projection:counting\"] button[data-action=\"rebuild\"]')";
    browser
        .wait_for("the rebuild button", &format!("return {rebuild}"))
        .await;
    browser
        .script(&format!("{rebuild}.click(); return true"))
        .await;
    browser
        .wait_for(
            "the confirmation",
            "return document.getElementById('confirm-yes')",
        )
        .await;
    browser.click("#confirm-yes").await;
    let refused = browser
        .wait_for(
            "the refusal",
            "const r = document.querySelector('#action-result.error'); return r && r.innerText",
        )
        .await;
    assert!(refused.as_str().unwrap().starts_with("403"), "{refused}");
    assert!(
        !read_model.states().await.unwrap()[0].rebuild_requested,
        "nothing was asked"
    );
    browser.use_token("operator-0123456789").await;
    browser
        .script(&format!("{rebuild}.click(); return true"))
        .await;
    browser
        .wait_for(
            "the confirmation",
            "return document.getElementById('confirm-yes')",
        )
        .await;
    browser.click("#confirm-yes").await;
    let done = browser
        .wait_for(
            "the rebuild requested",
            "const r = document.querySelector('#action-result.ok'); return r && r.innerText",
        )
        .await;
    assert!(
        done.as_str()
            .unwrap()
            .contains("Rebuild of counting requested"),
        "{done}"
    );
    assert!(read_model.states().await.unwrap()[0].rebuild_requested);
    browser.screenshot("moving-parts").await;
    browser
        .session(reqwest::Method::DELETE, "", json!({}))
        .await;
    drop(browser);

    // A system set to a dark theme gets the dark one.
    let dark = Browser::start_with(&["--blink-settings=preferredColorScheme=0"])
        .await
        .unwrap();
    dark.open(&server.url).await;
    dark.use_token("viewer-0123456789").await;
    dark.open(&format!("{}/#/dashboard", server.url)).await;
    dark.wait_for(
        "the dashboard in the dark theme",
        "return document.querySelector('#card-head').innerText !== '—' \
             && getComputedStyle(document.body).backgroundColor === 'rgb(18, 21, 27)'",
    )
    .await;
    dark.screenshot("dashboard-dark").await;
    dark.session(reqwest::Method::DELETE, "", json!({})).await;
    server.stop().await;
}
