// hl7 send --outbox and hl7 outbox ... against hl7 listen and loopback sockets that refuse or
// never answer: result lines, exit statuses, resuming after a run, JSON keys, the commands that
// look after an outbox, and bad files and environments.
#include "support/flat_json.hpp"
#include "support/tls_certs.hpp"
#include "support/tool_util.hpp"
#include "support/util.hpp"

#include <doctest/doctest.h>

#include <filesystem>
#include <set>
#include <sstream>
#include <thread>

#include <sys/resource.h>
#include <unistd.h>

using namespace hl7::test;

namespace {

std::vector<json_object> json_lines(const std::string& out)
{
    std::vector<json_object> objects;
    for (const std::string& line : lines(out)) {
        INFO("line: " << line);
        auto o = parse_flat_json(line);
        REQUIRE(o.has_value());
        objects.push_back(*o);
    }
    return objects;
}

std::set<std::string> keys_of(const json_object& o)
{
    std::set<std::string> keys;
    for (const auto& [k, v] : o)
        keys.insert(k);
    return keys;
}

std::string str(const json_value& v)
{
    REQUIRE(std::holds_alternative<std::string>(v));
    return std::get<std::string>(v);
}

std::string messages(const std::string& prefix, int n)
{
    std::string text;
    for (int i = 1; i <= n; ++i)
        text += small_message(prefix + std::to_string(i)) + "\r";
    return text;
}

// How many messages `hl7 listen --json` printed (its first line says where it listens).
std::size_t received(const std::string& out)
{
    std::size_t n = 0;
    for (const std::string& line : lines(out))
        n += line.starts_with("{");
    return n;
}

// The status of the one lane of an outbox, as JSON.
json_object lane_status(const std::string& db)
{
    const auto r = run({tool(), "outbox", "status", "--outbox", db, "--json"});
    REQUIRE(r.status == 0);
    const auto objects = json_lines(r.out);
    REQUIRE(objects.size() == 1);
    return objects[0];
}

} // namespace

TEST_CASE("send --outbox prints the lines of hl7 send, and its JSON adds outbox_id, state and possible_duplicate")
{
    temp_dir dir;
    const std::string db = (dir.path() / "out.db").string();
    listener l({"--json"});
    const auto text = run({tool(), "send", "--outbox", db, "--port", l.port(), sample("adt_a01.hl7")});
    CHECK(text.status == 0);
    CHECK(text.err == "");
    REQUIRE(lines(text.out).size() == 1);
    CHECK(lines(text.out)[0].starts_with("1 MSG00001 CA MSG00001 "));
    const auto json = run({tool(), "send", "--outbox", db, "--port", l.port(), "--json", sample("oru_r01.hl7")});
    CHECK(json.status == 0);
    const auto objects = json_lines(json.out);
    REQUIRE(objects.size() == 1);
    CHECK(keys_of(objects[0]) == std::set<std::string>{"index", "control_id", "ack_code", "ack_control_id", "rtt_us",
                                                         "error", "outbox_id", "state", "possible_duplicate"});
    auto o = objects[0];
    CHECK(o["control_id"] == json_value(std::string("MSG00002")));
    CHECK(o["ack_code"] == json_value(std::string("AA")));
    CHECK(o["outbox_id"] == json_value(std::int64_t{2}));
    CHECK(o["state"] == json_value(std::string("acknowledged")));
    CHECK(o["possible_duplicate"] == json_value(false));
    CHECK(received(l.stop().out) == 2);
}

TEST_CASE("send --outbox run again with the same input reports every message from the outbox and sends nothing again")
{
    temp_dir dir;
    const std::string db = (dir.path() / "out.db").string();
    const std::string input = dir.write("in.hl7", messages("R", 5));
    listener l({"--json"});
    const auto first = run({tool(), "send", "--outbox", db, "--port", l.port(), "--json", input});
    CHECK(first.status == 0);
    const auto second = run({tool(), "send", "--outbox", db, "--port", l.port(), "--json", input});
    CHECK(second.status == 0);
    const auto a = json_lines(first.out);
    auto b = json_lines(second.out);
    REQUIRE(a.size() == 5);
    REQUIRE(b.size() == 5);
    for (std::size_t i = 0; i < 5; ++i) {
        CHECK(b[i]["outbox_id"] == a[i].at("outbox_id"));
        CHECK(b[i]["state"] == json_value(std::string("acknowledged")));
        CHECK(b[i]["control_id"] == json_value(hl7::test::label("R", i + 1)));
    }
    CHECK(received(l.stop().out) == 5); // the listener got each message once
}

TEST_CASE("send --outbox to a NACKing peer records the message rejected, says why, and exits 1")
{
    temp_dir dir;
    const std::string db = (dir.path() / "out.db").string();
    listener l({"--reply", "AE"});
    const auto r = run({tool(), "send", "--outbox", db, "--port", l.port(), "--json"}, small_message("N1"));
    CHECK(r.status == 1);
    auto o = json_lines(r.out).at(0);
    CHECK(o["state"] == json_value(std::string("rejected")));
    CHECK(o["ack_code"] == json_value(std::string("AE")));
    CHECK(str(o["error"]) == "application error (AE/CE): hl7 listen --reply AE");
    const auto dead = run({tool(), "outbox", "list", "--outbox", db, "--state", "dead", "--json"});
    CHECK(dead.status == 0);
    REQUIRE(json_lines(dead.out).size() == 1);
}

TEST_CASE("send --outbox to a refused port keeps the message queued in the outbox and exits 1 with one clear line")
{
    temp_dir dir;
    const std::string db = (dir.path() / "out.db").string();
    loopback_socket closed;
    REQUIRE(closed.bound());
    const auto r = run({tool(), "send", "--outbox", db, "--port", closed.port(), "--retries", "2"}, small_message("Q1"));
    CHECK(r.status == 1);
    CHECK(r.out == "");
    CHECK(r.err == "hl7: gave up after 2 connection attempts: connection refused (127.0.0.1:" + closed.port() +
                       "); 1 message not final, kept in the outbox " + db + "\n");
    auto s = lane_status(db);
    CHECK(s["queued"] == json_value(std::int64_t{1}));
    CHECK(s["possible_duplicates"] == json_value(std::int64_t{0}));
    // Delivered later by a runner, once the destination listens.
    const auto list = run({tool(), "outbox", "list", "--outbox", db, "--state", "queued"});
    CHECK(lines(list.out).size() == 1);
}

TEST_CASE("send --outbox to a peer that never answers gives the message up after --max-attempts, flagged, and exits 1")
{
    temp_dir dir;
    const std::string db = (dir.path() / "out.db").string();
    loopback_socket silent;
    REQUIRE(silent.bound());
    silent.listen();
    const auto r = run({tool(), "send", "--outbox", db, "--port", silent.port(), "--ack-timeout", "0.2",
                        "--max-attempts", "2", "--json"},
                       small_message("T1"));
    CHECK(r.status == 1);
    auto o = json_lines(r.out).at(0);
    CHECK(o["state"] == json_value(std::string("failed")));
    CHECK(o["possible_duplicate"] == json_value(true));
    CHECK(str(o["error"]) == "no acknowledgement within the ACK timeout (gave up after 2 attempts)");
    // A dead letter goes again with retry, and is delivered by a runner.
    const auto retried = run({tool(), "outbox", "retry", "--outbox", db, "--dead"});
    CHECK(retried.status == 0);
    CHECK(retried.out == "queued again: 1\n");
    CHECK(lane_status(db)["queued"] == json_value(std::int64_t{1}));
}

TEST_CASE("outbox enqueue stores messages without sending them, prints their lanes, and outbox run --until-empty delivers them")
{
    temp_dir dir;
    const std::string db = (dir.path() / "out.db").string();
    const std::string input = dir.write("in.hl7", messages("E", 12));
    const auto e = run({tool(), "outbox", "enqueue", "--outbox", db, "--port", "2575", "--partition-key", "PID.3.1",
                        "--lanes", "3", "--json", input});
    CHECK(e.status == 0);
    const auto objects = json_lines(e.out);
    REQUIRE(objects.size() == 12);
    std::set<std::int64_t> lanes;
    for (auto o : objects) {
        CHECK(keys_of(o) == std::set<std::string>{"index", "outbox_id", "control_id", "lane", "state", "duplicate", "error"});
        CHECK(o["state"] == json_value(std::string("queued")));
        CHECK(o["duplicate"] == json_value(false));
        lanes.insert(std::get<std::int64_t>(o["lane"]));
    }
    CHECK(lanes.size() > 1);
    const auto again = run({tool(), "outbox", "enqueue", "--outbox", db, "--port", "2575", "--partition-key", "PID.3.1",
                            "--lanes", "3", input});
    CHECK(again.status == 0);
    CHECK(lines(again.out).size() == 12);
    CHECK(lines(again.out)[0].ends_with(" queued duplicate"));
    const auto conflict = run({tool(), "outbox", "enqueue", "--outbox", db, "--port", "2575"},
                              small_message("E1", "\r", "ADT^A08"));
    CHECK(conflict.status == 1);
    CHECK(conflict.out.find("already holds a different message with this MSH-10") != std::string::npos);

    // The same messages for a listener's port, in an outbox of their own, delivered by a runner.
    listener l({"--json"});
    const auto moved = run({tool(), "outbox", "enqueue", "--outbox", (dir.path() / "live.db").string(), "--port",
                            l.port(), "--partition-key", "PID.3.1", "--lanes", "3", input});
    CHECK(moved.status == 0);
    const auto delivered = run({tool(), "outbox", "run", "--outbox", (dir.path() / "live.db").string(), "--port",
                                l.port(), "--until-empty", "--json"});
    CHECK(delivered.status == 0);
    CHECK(json_lines(delivered.out).size() == 12);
    CHECK(received(l.stop().out) == 12);
    const auto status = run({tool(), "outbox", "status", "--outbox", (dir.path() / "live.db").string(), "--json"});
    std::int64_t acknowledged = 0;
    for (auto o : json_lines(status.out)) {
        acknowledged += std::get<std::int64_t>(o["acknowledged"]);
        CHECK(o["lease_held"] == json_value(false));
    }
    CHECK(acknowledged == 12);
}

TEST_CASE("outbox run delivers until SIGTERM and exits 0; a second runner on the same file exits 1 with a clear error")
{
    temp_dir dir;
    const std::string db = (dir.path() / "out.db").string();
    listener l({"--json"});
    child runner({tool(), "outbox", "run", "--outbox", db, "--port", l.port()});
    // Enqueued while the runner starts, or after: either way it delivers it (at start, or at
    // its next poll), and its line shows it holds the delivery lock.
    const auto e = run({tool(), "outbox", "enqueue", "--outbox", db, "--port", l.port()}, small_message("U1"));
    CHECK(e.status == 0);
    const auto line = runner.read_line(30s);
    REQUIRE(line.has_value());
    CHECK(line->starts_with("1 U1 acknowledged 1"));
    const auto second = run({tool(), "outbox", "run", "--outbox", db, "--port", l.port()});
    CHECK(second.status == 1);
    CHECK(second.err == "hl7: another process is delivering from this outbox (outbox " + db + ")\n");
    runner.signal(SIGTERM);
    const auto done = runner.wait(10s);
    CHECK(done.status == 0);
    CHECK_FALSE(done.timed_out);
    auto s = lane_status(db);
    CHECK(s["acknowledged"] == json_value(std::int64_t{1}));
    CHECK(s["lease_owner"] == json_value(json_null{}));
}

TEST_CASE("outbox run --metrics serves the outbox's counts and what the run did, in the Prometheus text format")
{
    temp_dir dir;
    const std::string db = (dir.path() / "out.db").string();
    listener l({"--json"});
    CHECK(run({tool(), "outbox", "enqueue", "--outbox", db, "--port", l.port()}, messages("P", 2)).status == 0);
    child runner({tool(), "outbox", "run", "--outbox", db, "--port", l.port(), "--metrics", "127.0.0.1:0"});
    REQUIRE(runner.read_line(30s).has_value());
    REQUIRE(runner.read_line(30s).has_value()); // both delivered
    const int port = metrics_port(runner);
    REQUIRE(port != 0);
    const std::string lane = "{destination=\"127.0.0.1:" + l.port() + "\",lane=\"0\"";
    std::string body;
    // The counts are refreshed every 2 s: asked again until they show both, for at most 60 s.
    for (const auto deadline = std::chrono::steady_clock::now() + 60s; std::chrono::steady_clock::now() < deadline;) {
        body = http_get(port);
        if (body.find("hl7_outbox_messages" + lane + ",state=\"acknowledged\"} 2\n") != std::string::npos)
            break;
        std::this_thread::sleep_for(100ms);
    }
    INFO("metrics: " << body);
    CHECK(body.starts_with("HTTP/1.1 200"));
    CHECK(body.find("hl7_outbox_messages" + lane + ",state=\"acknowledged\"} 2\n") != std::string::npos);
    CHECK(body.find("hl7_outbox_messages" + lane + ",state=\"queued\"} 0\n") != std::string::npos);
    CHECK(body.find("hl7_outbox_outcomes_total{state=\"acknowledged\"} 2\n") != std::string::npos);
    CHECK(body.find("hl7_outbox_sent_total{possible_duplicate=\"false\"} 2\n") != std::string::npos);
    CHECK(body.find("# TYPE hl7_outbox_commits_total counter\n") != std::string::npos);
    runner.signal(SIGTERM);
    CHECK(runner.wait(10s).status == 0);
    CHECK(run({tool(), "outbox", "run", "--outbox", db, "--port", l.port(), "--metrics", "nowhere"}).status == 2);
}

TEST_CASE("the TLS flags of hl7 send apply to send --outbox and to outbox run, mutual TLS included")
{
    const certificates& certs = shared_certificates();
    temp_dir dir;
    const std::string db = (dir.path() / "out.db").string();
    listener l({"--json", "--tls-cert", certs.server_cert, "--tls-key", certs.server_key, "--tls-ca", certs.ca});
    const std::vector<std::string> tls{"--tls-ca", certs.ca, "--tls-cert", certs.client_cert, "--tls-key", certs.client_key};
    std::vector<std::string> send{tool(), "send", "--outbox", db, "--port", l.port(), "--json"};
    send.insert(send.end(), tls.begin(), tls.end());
    const auto sent = run(send, small_message("TLS1"));
    CHECK(sent.status == 0);
    CHECK(json_lines(sent.out).at(0)["state"] == json_value(std::string("acknowledged")));
    // Without a client certificate the server refuses the handshake: the message stays queued.
    const auto refused = run({tool(), "send", "--outbox", db, "--port", l.port(), "--tls-ca", certs.ca, "--retries", "1"},
                             small_message("TLS2"));
    CHECK(refused.status == 1);
    CHECK(refused.err.find("gave up after 1 connection attempt") != std::string::npos);
    std::vector<std::string> deliver{tool(), "outbox", "run", "--outbox", db, "--port", l.port(), "--until-empty"};
    deliver.insert(deliver.end(), tls.begin(), tls.end());
    const auto delivered = run(deliver);
    CHECK(delivered.status == 0);
    CHECK(delivered.out.starts_with("2 TLS2 acknowledged"));
    CHECK(received(l.stop().out) == 2);
}

TEST_CASE("outbox list, retry and purge: states, ids that are not dead letters, and times in both formats")
{
    temp_dir dir;
    const std::string db = (dir.path() / "out.db").string();
    listener l({"--reply", "AR"});
    const auto sent = run({tool(), "send", "--outbox", db, "--port", l.port()}, messages("X", 3));
    CHECK(sent.status == 1);
    const auto all = run({tool(), "outbox", "list", "--outbox", db});
    REQUIRE(lines(all.out).size() == 3);
    CHECK(lines(all.out)[0].find(" X1 rejected 1 AR ") != std::string::npos);
    const auto by_state = run({tool(), "outbox", "list", "--outbox", db, "--state", "rejected", "--json"});
    REQUIRE(json_lines(by_state.out).size() == 3);
    CHECK(keys_of(json_lines(by_state.out)[0]) ==
          std::set<std::string>{"outbox_id", "destination", "lane", "control_id", "state", "attempts", "possible_duplicate",
                                "ack_code", "enqueued_at", "written_at", "finished_at", "error"});
    CHECK(run({tool(), "outbox", "list", "--outbox", db, "--state", "bogus"}).status == 2);
    const auto one = run({tool(), "outbox", "retry", "--outbox", db, "2", "99"});
    CHECK(one.status == 1);
    CHECK(one.out == "queued again: 1\n");
    CHECK(one.err == "hl7: no message 99 in the outbox\n");
    const auto not_dead = run({tool(), "outbox", "retry", "--outbox", db, "2"});
    CHECK(not_dead.status == 1);
    CHECK(not_dead.err == "hl7: message 2 is queued, not a dead letter\n");
    CHECK(run({tool(), "outbox", "retry", "--outbox", db}).status == 2);
    CHECK(run({tool(), "outbox", "purge", "--outbox", db, "--final-before", "yesterday"}).status == 2);
    const auto old = run({tool(), "outbox", "purge", "--outbox", db, "--final-before", "2000-01-01"});
    CHECK(old.status == 0);
    CHECK(old.out == "purged: 0 (final before 2000-01-01T00:00:00.000Z)\n");
    const auto offset = run({tool(), "outbox", "purge", "--outbox", db, "--final-before", "2000-01-01T02:30:00+02:00"});
    CHECK(offset.out == "purged: 0 (final before 2000-01-01T00:30:00.000Z)\n");
    const auto recent = run({tool(), "outbox", "purge", "--outbox", db, "--final-before", "0s"});
    CHECK(recent.status == 0);
    CHECK(recent.out.starts_with("purged: 2 "));
    CHECK(lines(run({tool(), "outbox", "list", "--outbox", db}).out).size() == 1);
    l.stop();
}

TEST_CASE("outbox usage errors exit 2; a missing, damaged or unreachable outbox exits 1 with a clear line")
{
    temp_dir dir;
    CHECK(run({tool(), "outbox"}).status == 2);
    CHECK(run({tool(), "outbox", "run", "--outbox", "x.db"}).status == 2); // --port is required
    CHECK(run({tool(), "send", "--outbox", (dir.path() / "o.db").string(), "--port", "1", "--synchronous", "maybe"},
              small_message("S1"))
              .status == 2);
    CHECK(run({tool(), "outbox", "enqueue", "--outbox", (dir.path() / "o.db").string(), "--port", "1", "--lanes", "0"},
              small_message("S1"))
              .status == 2);
    const auto missing = run({tool(), "outbox", "status", "--outbox", (dir.path() / "none.db").string()});
    CHECK(missing.status == 1);
    CHECK(missing.err == "hl7: no outbox at " + (dir.path() / "none.db").string() + "\n");
    const std::string junk = dir.write("junk.db", std::string(4096, 'j'));
    const auto damaged = run({tool(), "outbox", "status", "--outbox", junk});
    CHECK(damaged.status == 1);
    CHECK(damaged.err == "hl7: cannot open the outbox " + junk + ": the outbox file is damaged or is not a database\n");
    const std::string nowhere = (dir.path() / "no" / "such" / "dir.db").string();
    const auto unreachable = run({tool(), "send", "--outbox", nowhere, "--port", "1"}, small_message("S1"));
    CHECK(unreachable.status == 1);
    CHECK(unreachable.err == "hl7: cannot open the outbox " + nowhere + ": the outbox file cannot be opened or created\n");
    const std::string no_server = "postgresql:///hl7?host=/nonexistent/socket/dir";
    const auto postgres = run({tool(), "send", "--outbox", no_server, "--port", "1"}, small_message("S1"));
    CHECK(postgres.status == 1);
    CHECK(postgres.err == "hl7: cannot open the outbox " + no_server +
                              ": the PostgreSQL server cannot be reached or the connection was lost\n");
}

TEST_CASE("a full disk (a file size limit, RLIMIT_FSIZE, for the child) stops outbox enqueue with a clear error, and every line it printed is stored")
{
    temp_dir dir;
    const std::string db = (dir.path() / "out.db").string();
    std::string input;
    const std::string padding(10000, 'p');
    for (int i = 1; i <= 2000; ++i)
        input += "MSH|^~\\&|S|F|R|F|20240101||ADT^A01|F" + std::to_string(i) + "|P|2.5.1\rNTE|1||" + padding + "\r\r";
    const std::string file = dir.write("in.hl7", input);
    // The child inherits the lowered soft limit; ours goes back up at once (the hard limit is kept).
    // 6 MiB a file: more than a group commit of the 256 enqueues outstanding at most (2.6 MiB),
    // less than the input (20 MiB) split between the database and its log.
    struct rlimit saved{};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
    struct rlimit lowered = saved;
    lowered.rlim_cur = 6 * 1024 * 1024;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &lowered) == 0);
    std::optional<child> c;
    try {
        c.emplace(std::vector<std::string>{tool(), "outbox", "enqueue", "--outbox", db, "--port", "2575", file});
    } catch (...) {
        ::setrlimit(RLIMIT_FSIZE, &saved);
        throw;
    }
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &saved) == 0);
    const auto r = c->wait(60s);
    CHECK(r.status == 1);
    INFO("stderr: " << r.err);
    CHECK(r.err.find("disk full (or file size limit reached)") != std::string::npos);
    std::size_t printed = 0;
    for (const std::string& line : lines(r.out))
        printed += line.ends_with(" queued");
    CHECK(printed > 0);
    CHECK(printed < 2000);
    auto s = lane_status(db);
    CHECK(s["queued"] == json_value(static_cast<std::int64_t>(printed)));
}
