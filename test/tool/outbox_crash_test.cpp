// The outbox killed with SIGKILL again and again while it delivers to a receiver that records
// every message it gets, then run to the end: nothing lost, every message received twice
// flagged as a possible duplicate, each lane's order kept, and hl7 outbox status agreeing.
//
// The kills land at random moments and at the tool's pause points (HL7_OUTBOX_PAUSE, see
// tools/outbox_common.hpp): during a group commit, after `written` is committed and before the
// write, between the write and the ACK, and between the ACK and its record. The outbox runs
// with --synchronous normal: a commit then survives a killed process exactly as with full
// (the difference is power loss, which a test cannot cause), at a cost the two cores of CI
// can afford for 10,000 messages.
#include "support/flat_json.hpp"
#include "support/recording_server.hpp"
#include "support/tool_util.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <thread>

#include <sys/wait.h>

using namespace hl7::test;
using namespace std::chrono_literals;

namespace {

std::string control_id(int i)
{
    char id[16];
    std::snprintf(id, sizeof id, "C%05d", i);
    return id;
}

std::string input_of(int n)
{
    std::string text;
    for (int i = 1; i <= n; ++i)
        text += "MSH|^~\\&|SND|FAC|RCV|FAC|20240101120000||ADT^A01|" + control_id(i) + "|P|2.5.1\rPID|1||PAT" +
                std::to_string(i % 23) + "^^^FAC^MR||DOE^JOHN\r\r";
    return text;
}

// How one life of the child ends.
struct kill_plan {
    std::string pause; // "<point>:<n>", or empty for a kill after `after`
    std::chrono::milliseconds after{};
};

const char* const points[] = {"committing", "written", "sent", "acknowledged"};

// The first kills cover every pause point twice, then they are drawn at random.
std::vector<kill_plan> plans(std::mt19937& rng, int kills, int max_n, int max_ms)
{
    std::vector<kill_plan> out;
    std::uniform_int_distribution<int> n(1, max_n), ms(30, max_ms), coin(0, 2);
    for (int round = 0; round < 2; ++round)
        for (const char* p : points)
            out.push_back({std::string(p) + ":" + std::to_string(n(rng)), {}});
    while (static_cast<int>(out.size()) < kills) {
        if (coin(rng) == 0)
            out.push_back({"", std::chrono::milliseconds(ms(rng))});
        else
            out.push_back({std::string(points[std::uniform_int_distribution<int>(0, 3)(rng)]) + ":" +
                               std::to_string(n(rng)),
                           {}});
    }
    std::shuffle(out.begin() + 8, out.end(), rng);
    return out;
}

// Runs `argv` with HL7_OUTBOX_PAUSE set as planned and kills it (SIGKILL) when it pauses, or
// after the planned time. Returns the pause point it stopped at ("" for a timed kill), or
// nullopt when the child finished on its own first (successfully).
std::optional<std::string> run_and_kill(const std::vector<std::string>& argv, const kill_plan& plan)
{
    if (!plan.pause.empty())
        ::setenv("HL7_OUTBOX_PAUSE", plan.pause.c_str(), 1);
    std::optional<child> c;
    c.emplace(argv);
    ::unsetenv("HL7_OUTBOX_PAUSE");
    const auto deadline = std::chrono::steady_clock::now() + (plan.pause.empty() ? plan.after : 60s);
    std::optional<std::string> stopped_at;
    bool ended = false;
    while (std::chrono::steady_clock::now() < deadline) {
        const std::string err = c->err();
        if (const auto at = err.find("paused at "); at != std::string::npos) {
            stopped_at = err.substr(at + 10, err.find(' ', at + 10) - at - 10);
            break;
        }
        siginfo_t info{};
        // WNOWAIT: looks without reaping, which child::wait does.
        if (::waitid(P_PID, static_cast<id_t>(c->pid()), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
            info.si_pid == c->pid()) {
            ended = true;
            break;
        }
        std::this_thread::sleep_for(2ms);
    }
    if (!ended)
        c->signal(SIGKILL);
    const auto f = c->wait(30s);
    REQUIRE_FALSE(f.timed_out);
    if (f.status != 128 + SIGKILL) {
        INFO("stderr: " << f.err);
        REQUIRE(f.status == 0); // it finished before its kill
        return std::nullopt;
    }
    REQUIRE_MESSAGE((stopped_at || plan.pause.empty()), "the child did not reach " << plan.pause << " within 60 s");
    return stopped_at.value_or("");
}

// The outbox's records, by MSH-10.
std::map<std::string, json_object> records(const std::string& db)
{
    const auto r = run({tool(), "outbox", "list", "--outbox", db, "--json"}, {}, 60s);
    REQUIRE(r.status == 0);
    std::map<std::string, json_object> out;
    for (const std::string& line : lines(r.out)) {
        auto o = parse_flat_json(line);
        REQUIRE(o.has_value());
        out[std::get<std::string>(o->at("control_id"))] = *o;
    }
    return out;
}

struct totals {
    std::int64_t queued = 0, written = 0, acknowledged = 0, rejected = 0, failed = 0, possible_duplicates = 0;
};

totals status_of(const std::string& db)
{
    const auto r = run({tool(), "outbox", "status", "--outbox", db, "--json"});
    REQUIRE(r.status == 0);
    totals t;
    for (const std::string& line : lines(r.out)) {
        auto o = parse_flat_json(line);
        REQUIRE(o.has_value());
        t.queued += std::get<std::int64_t>(o->at("queued"));
        t.written += std::get<std::int64_t>(o->at("written"));
        t.acknowledged += std::get<std::int64_t>(o->at("acknowledged"));
        t.rejected += std::get<std::int64_t>(o->at("rejected"));
        t.failed += std::get<std::int64_t>(o->at("failed"));
        t.possible_duplicates += std::get<std::int64_t>(o->at("possible_duplicates"));
    }
    return t;
}

// The checks of the guarantees, given what the receiver got and the outbox's records.
void check_guarantees(const std::vector<std::string>& received, const std::map<std::string, json_object>& recs,
                      int n)
{
    REQUIRE(recs.size() == static_cast<std::size_t>(n));
    std::map<std::string, int> times;
    for (const std::string& id : received)
        ++times[id];
    int lost = 0, unflagged = 0, duplicated = 0;
    for (const auto& [id, rec] : recs) {
        const auto id_seen = id;
        CAPTURE(id_seen);
        CHECK(std::get<std::string>(rec.at("state")) == "acknowledged");
        lost += times[id] == 0;
        if (times[id] > 1) {
            ++duplicated;
            unflagged += !std::get<bool>(rec.at("possible_duplicate"));
        }
    }
    CHECK(lost == 0);
    CHECK(unflagged == 0);
    MESSAGE(duplicated << " of " << n << " messages were received more than once, all flagged");
    // Per lane, the first arrival of each message follows the outbox's order (its ids).
    std::map<std::int64_t, std::vector<std::int64_t>> firsts; // lane -> outbox ids in order of first arrival
    std::set<std::string> seen;
    for (const std::string& id : received) {
        if (!seen.insert(id).second)
            continue;
        const auto& rec = recs.at(id);
        firsts[std::get<std::int64_t>(rec.at("lane"))].push_back(std::get<std::int64_t>(rec.at("outbox_id")));
    }
    for (const auto& [lane, ids] : firsts) {
        const auto lane_seen = lane;
        CAPTURE(lane_seen);
        CHECK(std::is_sorted(ids.begin(), ids.end()));
    }
}

} // namespace

TEST_CASE("hl7 send --outbox killed at least 20 times while it delivers 10,000 messages loses none and flags every duplicate")
{
    constexpr int n = 10000;
    temp_dir dir;
    const std::string db = (dir.path() / "crash.db").string();
    const std::string input = dir.write("in.hl7", input_of(n));
    recording_server peer;
    const std::vector<std::string> argv{tool(), "send", "--outbox", db, "--synchronous", "normal", "--port",
                                        peer.port(), "--json", input};
    std::mt19937 rng(20240501);
    std::map<std::string, int> stopped_at;
    int kills = 0;
    for (const kill_plan& plan : plans(rng, 26, 400, 300)) {
        const auto at = run_and_kill(argv, plan);
        if (!at)
            break; // done before this kill: nothing left to interrupt
        ++kills;
        ++stopped_at[*at];
    }
    MESSAGE("killed " << kills << " times");
    for (const auto& [point, count] : stopped_at)
        MESSAGE("killed " << count << " times at " << (point.empty() ? "a random moment" : point));
    CHECK(kills >= 20);
    for (const char* p : points)
        CHECK(stopped_at[p] >= 1);

    const auto last = run(argv, {}, 180s);
    REQUIRE_FALSE(last.timed_out);
    CHECK(last.status == 0);
    const auto out = lines(last.out);
    REQUIRE(out.size() == static_cast<std::size_t>(n));
    int flagged_lines = 0;
    for (int i = 0; i < n; ++i) {
        auto o = parse_flat_json(out[static_cast<std::size_t>(i)]);
        REQUIRE(o.has_value());
        CHECK(std::get<std::string>(o->at("control_id")) == control_id(i + 1));
        CHECK(std::get<std::string>(o->at("state")) == "acknowledged");
        flagged_lines += std::get<bool>(o->at("possible_duplicate"));
    }
    const auto recs = records(db);
    check_guarantees(peer.received(), recs, n);
    const totals t = status_of(db);
    CHECK(t.acknowledged == n);
    CHECK(t.queued + t.written + t.rejected + t.failed == 0);
    CHECK(t.possible_duplicates == flagged_lines);
    CHECK(flagged_lines > 0); // the kills between the write and the record left some
}

TEST_CASE("hl7 outbox enqueue and run over 4 lanes, killed again and again, lose nothing and keep each lane's order")
{
    constexpr int n = 3000;
    temp_dir dir;
    const std::string db = (dir.path() / "lanes.db").string();
    const std::string input = dir.write("in.hl7", input_of(n));
    recording_server peer;
    std::mt19937 rng(7);
    // Enqueuing, killed during commits until it gets through.
    const std::vector<std::string> enqueue{tool(),        "outbox", "enqueue", "--outbox",  db,    "--synchronous",
                                           "normal",      "--port", peer.port(), "--lanes", "4",   "--partition-key",
                                           "PID.3.1",     input};
    for (int i = 0; i < 3; ++i) {
        const auto at = run_and_kill(enqueue, {"committing:" + std::to_string(1 + i * 3), {}});
        CHECK(at == std::optional<std::string>("committing"));
    }
    const auto stored = run(enqueue, {}, 120s);
    CHECK(stored.status == 0);
    CHECK(lines(stored.out).size() == static_cast<std::size_t>(n));
    const totals queued = status_of(db);
    CHECK(queued.queued == n);

    const std::vector<std::string> deliver{tool(), "outbox", "run", "--outbox", db, "--synchronous", "normal",
                                           "--port", peer.port(), "--until-empty"};
    int kills = 0;
    for (const kill_plan& plan : plans(rng, 14, 120, 250)) {
        const auto at = run_and_kill(deliver, plan);
        if (!at)
            break;
        ++kills;
    }
    MESSAGE("killed " << kills << " times while delivering, 3 times while enqueuing");
    CHECK(kills >= 10);
    const auto last = run(deliver, {}, 180s);
    REQUIRE_FALSE(last.timed_out);
    CHECK(last.status == 0);
    const auto recs = records(db);
    check_guarantees(peer.received(), recs, n);
    std::set<std::int64_t> lanes;
    for (const auto& [id, rec] : recs)
        lanes.insert(std::get<std::int64_t>(rec.at("lane")));
    CHECK(lanes.size() == 4);
    const totals t = status_of(db);
    CHECK(t.acknowledged == n);
    CHECK(t.queued + t.written == 0);
}
