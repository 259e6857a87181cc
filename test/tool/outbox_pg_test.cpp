// Several `hl7 outbox run` instances on one PostgreSQL database (started by the test itself)
// and one destination: one is SIGKILLed mid-flight, another SIGSTOPped past its lease and then
// continued; and a server restarted during delivery. At the receiver, which records every
// frame with the connection it came on: every message arrived at least once, every duplicate
// is flagged in the store, per patient the messages arrived in enqueue order (allowing flagged
// resends), no lane was delivered by two connections at once, and the stopped instance wrote
// nothing once its lease was taken over. Skipped where PostgreSQL's server is not installed.
#include "support/flat_json.hpp"
#include "support/postgres.hpp"
#include "support/recording_server.hpp"
#include "support/tool_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <csignal>
#include <map>
#include <set>
#include <thread>

using namespace hl7::test;
using namespace std::chrono_literals;

namespace {

const bool no_postgres = !throwaway_postgres::available();

std::string control_id(int i)
{
    char id[16];
    std::snprintf(id, sizeof id, "C%05d", i);
    return id;
}

std::string patient_of(int i, int patients)
{
    return "PAT" + std::to_string(i % patients);
}

std::string input_of(int n, int patients)
{
    std::string text;
    for (int i = 1; i <= n; ++i)
        text += "MSH|^~\\&|SND|FAC|RCV|FAC|20240101120000||ADT^A08|" + control_id(i) + "|P|2.5.1\rPID|1||" +
                patient_of(i, patients) + "^^^FAC^MR||DOE^JOHN\r\r";
    return text;
}

struct stored {
    std::int64_t id = 0, lane = 0, outcome = 0, token = 0;
    std::string state;
    bool flagged = false;
};

// Every message as the store has it, read behind the library's back.
std::map<std::string, stored> records_of(const throwaway_postgres& pg, const std::string& schema)
{
    std::map<std::string, stored> out;
    const std::string text = pg.psql("SELECT convert_from(control_id, 'UTF8'), id, lane, coalesce(outcome, 0), token, "
                                     "state, possible_duplicate FROM " + schema + ".messages");
    for (const std::string& line : lines(text)) {
        std::vector<std::string> f;
        std::size_t start = 0;
        for (std::size_t bar; (bar = line.find('|', start)) != std::string::npos; start = bar + 1)
            f.push_back(line.substr(start, bar - start));
        f.push_back(line.substr(start));
        REQUIRE(f.size() == 7);
        static const char* states[] = {"queued", "written", "acknowledged", "rejected", "failed"};
        out[f[0]] = {.id = std::stoll(f[1]),
                     .lane = std::stoll(f[2]),
                     .outcome = std::stoll(f[3]),
                     .token = std::stoll(f[4]),
                     .state = states[std::clamp(std::stoi(f[5]), 0, 4)],
                     .flagged = f[6] == "t"};
    }
    return out;
}

// The guarantees, from what the receiver got and what the store says.
void check_guarantees(const std::vector<arrival>& arrivals, const std::map<std::string, stored>& recs, int n,
                      int patients)
{
    REQUIRE(recs.size() == static_cast<std::size_t>(n));
    std::map<std::string, int> times;
    for (const arrival& a : arrivals)
        ++times[a.control_id];
    int lost = 0, unflagged = 0, duplicated = 0, unfinished = 0;
    for (const auto& [id, rec] : recs) {
        unfinished += rec.state != "acknowledged";
        lost += times[id] == 0;
        if (times[id] > 1) {
            ++duplicated;
            unflagged += !rec.flagged;
        }
    }
    CHECK(unfinished == 0);
    CHECK(lost == 0);
    CHECK(unflagged == 0);
    MESSAGE(duplicated << " of " << n << " messages arrived more than once, every one flagged");

    // Per patient, in enqueue order: an arrival of an earlier message after a later one is
    // only ever a flagged resend.
    std::map<std::string, std::int64_t> newest; // patient -> highest outbox id arrived
    int out_of_order = 0;
    for (const arrival& a : arrivals) {
        const stored& rec = recs.at(a.control_id);
        const std::string patient = patient_of(std::stoi(a.control_id.substr(1)), patients);
        auto& high = newest[patient];
        if (rec.id < high && !rec.flagged)
            ++out_of_order;
        high = std::max(high, rec.id);
    }
    CHECK(out_of_order == 0);
    // And the first arrivals of each patient's messages are exactly in enqueue order.
    std::map<std::string, std::vector<std::int64_t>> firsts;
    std::set<std::string> seen;
    for (const arrival& a : arrivals)
        if (seen.insert(a.control_id).second)
            firsts[patient_of(std::stoi(a.control_id.substr(1)), patients)].push_back(recs.at(a.control_id).id);
    int unsorted = 0;
    for (const auto& entry : firsts)
        unsorted += !std::is_sorted(entry.second.begin(), entry.second.end());
    CHECK(unsorted == 0);

    // No lane delivered by two connections at once: once a lane's frames come on a new
    // connection, the earlier connection sends nothing more on it, but for the one frame that
    // may have been on its way (its sender was paused, or merely slow, between its last lease
    // check and the write; the window is 1), which is a flagged resend. That is at most one
    // late frame per lane and connection it moved away from: the stopped instance may leave
    // one in each lane it held, and on a loaded machine any instance whose lease ran out.
    std::map<std::int64_t, std::vector<const arrival*>> by_lane;
    for (const arrival& a : arrivals)
        by_lane[recs.at(a.control_id).lane].push_back(&a);
    int overlaps = 0, late_frames = 0;
    std::map<std::pair<std::int64_t, std::uint16_t>, int> late; // (lane, connection moved away from) -> frames
    for (const auto& [lane, lane_arrivals] : by_lane) {
        std::set<std::uint16_t> done; // connections the lane moved away from
        std::uint16_t current = 0;
        for (const arrival* a : lane_arrivals) {
            if (a->port == current)
                continue;
            if (done.contains(a->port)) {
                if (recs.at(a->control_id).flagged) {
                    ++late_frames;
                    ++late[{lane, a->port}];
                } else {
                    ++overlaps;
                }
                continue;
            }
            if (current != 0)
                done.insert(current);
            current = a->port;
        }
    }
    CHECK(overlaps == 0);
    int more_than_one = 0;
    for (const auto& [where, frames] : late)
        more_than_one += frames > 1;
    CHECK(more_than_one == 0);
    MESSAGE(late_frames << " late frames (flagged resends on a connection its lane had left), in " << late.size()
                        << " lane connections");

    // Fencing in the store: outcomes are numbered in commit order, and in each lane their
    // tokens never go back, so no holder wrote an outcome after its lease was taken over.
    std::map<std::int64_t, std::vector<std::pair<std::int64_t, std::int64_t>>> outcomes; // lane -> (outcome, token)
    for (const auto& [id, rec] : recs)
        outcomes[rec.lane].emplace_back(rec.outcome, rec.token);
    int stale_writes = 0;
    for (auto& entry : outcomes) {
        std::sort(entry.second.begin(), entry.second.end());
        for (std::size_t i = 1; i < entry.second.size(); ++i)
            stale_writes += entry.second[i].second < entry.second[i - 1].second;
    }
    CHECK(stale_writes == 0);
}

// Whether `ready()` comes true within `limit`, asked every 100 ms.
template <class Ready>
bool eventually(std::chrono::seconds limit, Ready ready)
{
    const auto deadline = std::chrono::steady_clock::now() + limit;
    while (!ready()) {
        if (std::chrono::steady_clock::now() > deadline)
            return false;
        std::this_thread::sleep_for(100ms);
    }
    return true;
}

} // namespace

TEST_SUITE_BEGIN("postgresql" * doctest::skip(no_postgres));

TEST_CASE("three instances on one database deliver 10,000 messages over 8 lanes through a SIGKILL and a SIGSTOP past the lease")
{
    constexpr int n = 10000, patients = 500;
    auto pg = throwaway_postgres::start();
    temp_dir dir;
    const std::string input = dir.write("in.hl7", input_of(n, patients));
    recording_server peer(1ms);
    const std::string schema = "takeover";
    const auto enqueued = run({tool(), "outbox", "enqueue", "--outbox", pg.uri(), "--schema", schema, "--port",
                               peer.port(), "--partition-key", "PID.3.1", "--lanes", "8", "--json", input},
                              {}, 180s);
    REQUIRE(enqueued.status == 0);
    const auto enqueue_lines = lines(enqueued.out);
    REQUIRE(enqueue_lines.size() == static_cast<std::size_t>(n));
    std::set<std::int64_t> lanes;
    for (const std::string& line : enqueue_lines) {
        auto o = parse_flat_json(line);
        REQUIRE(o.has_value());
        CHECK(std::get<std::string>(o->at("state")) == "queued");
        lanes.insert(std::get<std::int64_t>(o->at("lane")));
    }
    CHECK(lanes.size() == 8);

    const std::vector<std::string> argv{tool(),       "outbox",  "run",         "--outbox", pg.uri(),
                                        "--schema",   schema,    "--port",      peer.port(), "--until-empty",
                                        "--lease-ttl", "2",      "--json"};
    std::vector<std::unique_ptr<child>> instances;
    for (int i = 0; i < 3; ++i)
        instances.push_back(std::make_unique<child>(argv));
    REQUIRE(peer.wait_for(n / 5, 120s));
    instances[0]->signal(SIGKILL);
    REQUIRE(peer.wait_for(n * 2 / 5, 120s));
    // Stopped while it holds lanes, and past its lease: the remaining instance takes its lanes
    // over. Waited for as events (the leases in the store, the frames at the receiver), not
    // for a time: on a loaded machine a takeover takes longer than its lease_ttl + poll_interval.
    const std::string stopped_owner = "owner LIKE '%:" + std::to_string(instances[2]->pid()) + ":%'";
    auto lanes_held = [&] { return std::stoi(pg.psql("SELECT count(*) FROM " + schema + ".lanes WHERE " + stopped_owner)); };
    REQUIRE_MESSAGE(eventually(120s, [&] { return lanes_held() > 0; }), "the instance to stop never held a lane");
    instances[2]->signal(SIGSTOP);
    const auto stopped_at = peer.count();
    const bool taken_over = eventually(120s, [&] { return lanes_held() == 0; });
    CHECK_MESSAGE(taken_over, "the stopped instance's lanes were not taken over within 120 s; transactions open: "
                                  << pg.psql("SELECT pid, state, pg_blocking_pids(pid), left(query, 60) FROM "
                                             "pg_stat_activity WHERE datname = 'postgres' AND pid <> pg_backend_pid()"));
    // The others went on meanwhile: more frames than the stopped instance can have had on
    // their way (one per lane) came since it stopped.
    if (taken_over)
        CHECK(eventually(120s, [&] { return peer.count() > stopped_at + 8; }));
    instances[2]->signal(SIGCONT);

    const auto killed = instances[0]->wait(30s);
    CHECK(killed.status == 128 + SIGKILL);
    const auto survivor = instances[1]->wait(180s);
    const auto paused = instances[2]->wait(180s);
    REQUIRE_FALSE(survivor.timed_out);
    REQUIRE_FALSE(paused.timed_out);
    CHECK_MESSAGE(survivor.status == 0, survivor.err);
    CHECK_MESSAGE(paused.status == 0, paused.err);
    // What the stopped instance found when it woke: its leases gone, its lanes left alone.
    MESSAGE("the stopped instance said: " << paused.err);

    const auto recs = records_of(pg, schema);
    check_guarantees(peer.arrivals(), recs, n, patients);

    const auto status = run({tool(), "outbox", "status", "--outbox", pg.uri(), "--schema", schema, "--json"});
    REQUIRE(status.status == 0);
    std::int64_t acknowledged = 0, tokens_moved = 0;
    for (const std::string& line : lines(status.out)) {
        auto o = parse_flat_json(line);
        REQUIRE(o.has_value());
        acknowledged += std::get<std::int64_t>(o->at("acknowledged"));
        tokens_moved += std::get<std::int64_t>(o->at("lease_token")) > 1;
    }
    CHECK(acknowledged == n);
    CHECK(tokens_moved > 0); // lanes changed hands
}

TEST_CASE("PostgreSQL restarted during delivery: the instance stops, reconnects, resumes and loses nothing")
{
    constexpr int n = 2000, patients = 100;
    auto pg = throwaway_postgres::start(true); // durable: what was committed survives the restart
    temp_dir dir;
    const std::string input = dir.write("in.hl7", input_of(n, patients));
    recording_server peer(1ms);
    const std::string schema = "restarted";
    const auto enqueued = run({tool(), "outbox", "enqueue", "--outbox", pg.uri(), "--schema", schema, "--port",
                               peer.port(), "--partition-key", "PID.3.1", "--lanes", "4", input},
                              {}, 180s);
    REQUIRE(enqueued.status == 0);
    child instance({tool(), "outbox", "run", "--outbox", pg.uri(), "--schema", schema, "--port", peer.port(),
                    "--until-empty", "--lease-ttl", "5"});
    REQUIRE(peer.wait_for(n / 4, 120s));
    pg.kill();
    const auto during = peer.count();
    std::this_thread::sleep_for(2s);
    pg.restart();
    const auto done = instance.wait(180s);
    REQUIRE_FALSE(done.timed_out);
    CHECK_MESSAGE(done.status == 0, done.err);
    CHECK(done.err.find("cannot be reached") != std::string::npos); // it noticed
    CHECK(peer.count() > during);
    check_guarantees(peer.arrivals(), records_of(pg, schema), n, patients);
}

TEST_SUITE_END();
