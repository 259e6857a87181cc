// The SQLite store against real files in temporary directories: what it keeps, leases and
// their fencing, group commit, and bad files and environments (a damaged or foreign file, a
// read-only directory, a full disk by RLIMIT_FSIZE in a child process, two delivering
// processes), each a named error with nothing acknowledged lost.
#include "outbox/sqlite_store.hpp"

#include "support/store_harness.hpp"
#include "support/tool_util.hpp"
#include "support/util.hpp"

#include <doctest/doctest.h>

#include <sqlite3.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>

#include <pwd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

using namespace std::chrono_literals;
namespace asio = boost::asio;
namespace fs = std::filesystem;
using hl7::outbox_errc;
using hl7::outbox_state;
using hl7::detail::lane_change;
using error_code = boost::system::error_code;
using time_point = hl7::outbox_clock::time_point;

namespace {

using hl7::test::store_t0;
using hl7::test::store_destination;
using hl7::test::store_message;
using hl7::test::store_bytes;

struct fixture : hl7::test::store_harness {
    explicit fixture(const std::string& path, hl7::outbox_synchronous sync = hl7::outbox_synchronous::normal,
                     std::function<void(const hl7::outbox_event&)> observer = {})
        : store_harness([&](asio::any_io_executor ex) {
              return hl7::detail::open_sqlite_store(ex, path,
                                                    {.synchronous = sync, .busy_timeout = 5s, .observer = std::move(observer)});
          })
    {
    }
};

std::string db_in(const hl7::test::temp_dir& dir)
{
    return (dir.path() / "outbox.db").string();
}

// Runs `body` in a forked child and returns what it wrote to its pipe (the child's own
// stores, threads and limits stay in the child).
std::string in_child(const std::function<std::string()>& body)
{
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        ::close(fds[0]);
        std::string out;
        try {
            out = body();
        } catch (const std::exception& e) {
            out = std::string("exception: ") + e.what();
        } catch (...) {
            out = "exception";
        }
        const ssize_t n = ::write(fds[1], out.data(), out.size());
        ::_exit(n == static_cast<ssize_t>(out.size()) ? 0 : 1);
    }
    ::close(fds[1]);
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(fds[0], buf, sizeof buf)) > 0)
        out.append(buf, static_cast<std::size_t>(n));
    ::close(fds[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    CHECK_MESSAGE((WIFEXITED(status) && WEXITSTATUS(status) == 0), "the child process failed: " << out);
    return out;
}

std::string name_of(error_code ec)
{
    return std::string(ec.category().name()) + ":" + std::to_string(ec.value());
}

} // namespace

TEST_CASE("an enqueued message is stored with everything the outbox knows of it, and ids grow")
{
    hl7::test::temp_dir dir;
    fixture f(db_in(dir));
    REQUIRE(f.store);
    const auto a = f.enqueue(store_message("A1", 2));
    const auto b = f.enqueue(store_message("A2"));
    CHECK(a.id > 0);
    CHECK(b.id > a.id);
    CHECK(a.lane == 2);
    CHECK(a.state == outbox_state::queued);
    CHECK_FALSE(a.duplicate);
    const auto r = f.get(a.id);
    CHECK(r.destination == store_destination);
    CHECK(r.lane == 2);
    CHECK(r.control_id == "A1");
    CHECK(r.message == store_bytes("A1"));
    CHECK(r.state == outbox_state::queued);
    CHECK(r.attempts == 0);
    CHECK_FALSE(r.possible_duplicate);
    CHECK(r.enqueued_at == store_t0);
    CHECK(r.queued_at == store_t0);
    CHECK_FALSE(r.written_at.has_value());
    CHECK_FALSE(r.finished_at.has_value());
    CHECK(r.outcome == 0);
}

TEST_CASE("the same message again is a duplicate; the same MSH-10 with other bytes is a conflict; another destination is new")
{
    hl7::test::temp_dir dir;
    fixture f(db_in(dir));
    REQUIRE(f.store);
    const auto first = f.enqueue(store_message("D1"));
    const auto again = f.enqueue(store_message("D1"));
    CHECK(again.duplicate);
    CHECK(again.id == first.id);
    auto changed = store_message("D1");
    changed.bytes += "ZZZ|1\r";
    f.enqueue(changed, outbox_errc::control_id_conflict);
    const auto elsewhere = f.enqueue(store_message("D1", 0, "127.0.0.1:2576"));
    CHECK_FALSE(elsewhere.duplicate);
    CHECK(f.select({}).size() == 2);
}

TEST_CASE("what was enqueued is there after the store is closed and opened again")
{
    hl7::test::temp_dir dir;
    std::int64_t id = 0;
    {
        fixture f(db_in(dir), hl7::outbox_synchronous::full);
        REQUIRE(f.store);
        id = f.enqueue(store_message("P1")).id;
    }
    fixture again(db_in(dir));
    REQUIRE(again.store);
    CHECK(again.get(id).control_id == "P1");
    CHECK(again.enqueue(store_message("P1")).duplicate);
}

TEST_CASE("concurrent enqueues share commits, and every one of them is stored")
{
    hl7::test::temp_dir dir;
    std::atomic<std::size_t> commits{0}, committed{0};
    fixture f(db_in(dir), hl7::outbox_synchronous::full, [&](const hl7::outbox_event& e) {
        if (e.what == hl7::outbox_event::kind::committing) {
            ++commits;
            committed += e.count;
        }
    });
    REQUIRE(f.store);
    constexpr int n = 300;
    int done = 0, failed = 0;
    for (int i = 0; i < n; ++i)
        f.store->enqueue(store_message(hl7::test::label("G", i)), [&](error_code ec, hl7::enqueue_result) {
            ++done;
            failed += ec ? 1 : 0;
        });
    f.ctx.run_for(20s);
    CHECK(done == n);
    CHECK(failed == 0);
    CHECK(committed == n);
    CHECK(commits < n); // the first commit's sync is long enough for the others to pile up
    CHECK(f.select({.limit = 1000}).size() == n);
}

TEST_CASE("a lease is renewed by its owner, taken over with the next token, and a stale lease cannot write")
{
    hl7::test::temp_dir dir;
    fixture f(db_in(dir));
    REQUIRE(f.store);
    const auto id = f.enqueue(store_message("L1")).id;
    auto [early, none] = f.claim(0, "a");
    CHECK(early == outbox_errc::delivery_locked); // no claim before begin_delivery
    REQUIRE(!f.begin_delivery());
    auto [e1, a1] = f.claim(0, "a");
    REQUIRE(!e1);
    CHECK(a1.token == 1);
    CHECK(a1.expires == store_t0 + 30s);
    auto [e2, a2] = f.claim(0, "a", 30s, store_t0 + 10s);
    REQUIRE(!e2);
    CHECK(a2.token == 1);
    CHECK(a2.expires == store_t0 + 40s);
    auto [e3, b] = f.claim(0, "b");
    REQUIRE(!e3);
    CHECK(b.token == 2);
    CHECK(f.record(a1, {lane_change::mark_written(id, store_t0, false)}) == outbox_errc::lease_lost);
    CHECK(f.get(id).state == outbox_state::queued);
    CHECK(!f.record(b, {lane_change::mark_written(id, store_t0, false)}));
    CHECK(f.get(id).state == outbox_state::written);
    const auto s = f.status();
    REQUIRE(s.size() == 1);
    CHECK(s[0].lease_owner == "b");
    CHECK(s[0].lease_token == 2);
    CHECK(std::get<0>(f.call<>([&, lease = b](auto h) { f.store->release(lease, std::move(h)); })) == error_code{});
    CHECK(f.status()[0].lease_owner == "");
}

TEST_CASE("a lane's changes are applied in order: written counts an attempt and flags, requeued uncounts, finished numbers outcomes")
{
    hl7::test::temp_dir dir;
    fixture f(db_in(dir));
    REQUIRE(f.store);
    hl7::test::check_changes_in_order(f);
}

TEST_CASE("the pending query gives a lane's queued and written messages by id, and nothing of other lanes or final ones")
{
    hl7::test::temp_dir dir;
    fixture f(db_in(dir));
    REQUIRE(f.store);
    std::vector<std::int64_t> lane1;
    for (int i = 0; i < 6; ++i) {
        const auto r = f.enqueue(store_message(hl7::test::label("Q", i), static_cast<std::uint32_t>(i % 2)));
        if (i % 2 == 1)
            lane1.push_back(r.id);
    }
    REQUIRE(!f.begin_delivery());
    auto [ec, l] = f.claim(1, "me");
    REQUIRE(!ec);
    REQUIRE(!f.record(l, {lane_change::mark_written(lane1[0], store_t0, false),
                          lane_change::finish(lane1[0], store_t0, outbox_state::acknowledged, "")}));
    REQUIRE(!f.record(l, {lane_change::mark_written(lane1[1], store_t0, false)}));
    const auto pending = f.select({.destination = store_destination,
                                   .lane = 1,
                                   .states = {outbox_state::queued, outbox_state::written},
                                   .limit = 32});
    REQUIRE(pending.size() == 2);
    CHECK(pending[0].id == lane1[1]);
    CHECK(pending[0].state == outbox_state::written);
    CHECK(pending[1].id == lane1[2]);
    auto [lec, lanes] = f.call<std::vector<std::uint32_t>>([&](auto h) { f.store->lanes(store_destination, std::move(h)); });
    CHECK(!lec);
    CHECK(lanes == std::vector<std::uint32_t>{0, 1});
}

TEST_CASE("retry queues dead letters again from zero attempts and out of the outcome stream; purge deletes only final ones")
{
    hl7::test::temp_dir dir;
    fixture f(db_in(dir));
    REQUIRE(f.store);
    const auto dead = f.enqueue(store_message("X1")).id;
    const auto good = f.enqueue(store_message("X2")).id;
    const auto waiting = f.enqueue(store_message("X3")).id;
    REQUIRE(!f.begin_delivery());
    auto [ec, l] = f.claim(0, "me");
    REQUIRE(!ec);
    REQUIRE(!f.record(l, {lane_change::mark_written(dead, store_t0, false),
                          lane_change::finish(dead, store_t0, outbox_state::failed, "gave up"),
                          lane_change::mark_written(good, store_t0, false),
                          lane_change::finish(good, store_t0, outbox_state::acknowledged, "")}));
    auto [rec1, n1] = f.call<std::uint64_t>([&](auto h) { f.store->retry({dead, good, waiting}, false, store_t0 + 1h, std::move(h)); });
    CHECK(!rec1);
    CHECK(n1 == 1);
    const auto r = f.get(dead);
    CHECK(r.state == outbox_state::queued);
    CHECK(r.attempts == 0);
    CHECK(r.outcome == 0);
    CHECK(r.error == "");
    CHECK(r.queued_at == store_t0 + 1h);
    CHECK(r.enqueued_at == store_t0);
    CHECK(f.select({.after_outcome = 0}).size() == 1);
    REQUIRE(!f.record(l, {lane_change::mark_written(dead, store_t0, false),
                          lane_change::finish(dead, store_t0 + 2h, outbox_state::rejected, "no")}));
    auto [rec2, n2] = f.call<std::uint64_t>([&](auto h) { f.store->retry({}, true, store_t0 + 3h, std::move(h)); });
    CHECK(n2 == 1);
    REQUIRE(!f.record(l, {lane_change::mark_written(dead, store_t0, false),
                          lane_change::finish(dead, store_t0 + 4h, outbox_state::acknowledged, "")}));
    auto [pec, purged] = f.call<std::uint64_t>([&](auto h) { f.store->purge(store_t0 + 1h, std::move(h)); });
    CHECK(!pec);
    CHECK(purged == 1); // `good`, final since store_t0; `dead` became final later, `waiting` is not final
    CHECK(f.select({}).size() == 2);
    // A purged MSH-10 may be enqueued again, under a new id.
    CHECK(f.enqueue(store_message("X2")).id > waiting);
}

TEST_CASE("status counts messages by destination, lane and state, with duplicates, the oldest pending and the lease")
{
    hl7::test::temp_dir dir;
    fixture f(db_in(dir));
    REQUIRE(f.store);
    auto old = store_message("S1");
    old.at = store_t0 - 1h;
    const auto a = f.enqueue(old).id;
    f.enqueue(store_message("S2"));
    f.enqueue(store_message("S3", 1));
    f.enqueue(store_message("S4", 0, "[::1]:7000"));
    REQUIRE(!f.begin_delivery());
    auto [ec, l] = f.claim(0, "runner-1");
    REQUIRE(!ec);
    REQUIRE(!f.record(l, {lane_change::mark_written(a, store_t0, true)}));
    const auto s = f.status();
    REQUIRE(s.size() == 3);
    CHECK(s[0].destination == store_destination);
    CHECK(s[0].lane == 0);
    CHECK(s[0].queued == 1);
    CHECK(s[0].written == 1);
    CHECK(s[0].possible_duplicates == 1);
    CHECK(s[0].oldest_pending == store_t0 - 1h);
    CHECK(s[0].lease_owner == "runner-1");
    CHECK(s[0].lease_expires == store_t0 + 30s);
    CHECK(s[1].lane == 1);
    CHECK(s[1].queued == 1);
    CHECK(s[1].lease_owner == "");
    CHECK(s[2].destination == "[::1]:7000");
}

TEST_CASE("a second store delivering from the same file is refused until the first one stops delivering")
{
    hl7::test::temp_dir dir;
    fixture first(db_in(dir));
    fixture second(db_in(dir));
    REQUIRE(first.store);
    REQUIRE(second.store);
    REQUIRE(!first.begin_delivery());
    CHECK(second.begin_delivery() == outbox_errc::delivery_locked);
    // Enqueuing and reading are open to everyone meanwhile.
    CHECK(second.enqueue(store_message("T1")).id > 0);
    CHECK(first.select({}).size() == 1);
    CHECK(std::get<0>(first.call<>([&](auto h) { first.store->end_delivery(std::move(h)); })) == error_code{});
    CHECK(!second.begin_delivery());
}

TEST_CASE("operations after close complete with closed")
{
    hl7::test::temp_dir dir;
    fixture f(db_in(dir));
    REQUIRE(f.store);
    bool closed = false;
    f.store->close([&] { closed = true; });
    f.ctx.run_for(10s);
    CHECK(closed);
    f.enqueue(store_message("C1"), outbox_errc::closed);
}

// --- bad files -------------------------------------------------------------------------------

TEST_CASE("a file that is not a database, or a text file, is refused as a damaged outbox")
{
    hl7::test::temp_dir dir;
    std::string noise(8192, '\0');
    std::mt19937 rng(3);
    for (char& c : noise)
        c = static_cast<char>(rng());
    for (const std::string& bytes : {noise, std::string("hello, this is not an outbox\n"), std::string("SQLite")}) {
        const std::string path = dir.write("bad.db", bytes);
        fixture f(path);
        CHECK_FALSE(f.store);
        CHECK(f.open_error == outbox_errc::corrupt_store);
        CHECK(fs::file_size(path) == bytes.size()); // left as it was
    }
}

TEST_CASE("a truncated outbox file is refused as damaged")
{
    hl7::test::temp_dir dir;
    {
        fixture f(db_in(dir));
        REQUIRE(f.store);
        for (int i = 0; i < 300; ++i)
            f.enqueue({.destination = "h:1", .control_id = hl7::test::label("T", i), .bytes = store_bytes("T", 1000), .at = store_t0});
    }
    REQUIRE(!fs::exists(db_in(dir) + "-wal")); // checkpointed at close
    const auto size = fs::file_size(db_in(dir));
    REQUIRE(size > 100000);
    fs::resize_file(db_in(dir), size / 2);
    fixture f(db_in(dir));
    CHECK_FALSE(f.store);
    CHECK(f.open_error == outbox_errc::corrupt_store);
}

TEST_CASE("an SQLite database of something else is not taken for an outbox, and is left alone")
{
    hl7::test::temp_dir dir;
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(db_in(dir).c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "CREATE TABLE patients(id INTEGER)", nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
    fixture f(db_in(dir));
    CHECK_FALSE(f.store);
    CHECK(f.open_error == outbox_errc::incompatible_store);
    REQUIRE(sqlite3_open(db_in(dir).c_str(), &db) == SQLITE_OK);
    int tables = 0;
    sqlite3_exec(db, "SELECT count(*) FROM sqlite_master", [](void* n, int, char** v, char**) {
        *static_cast<int*>(n) = std::atoi(v[0]);
        return 0;
    }, &tables, nullptr);
    sqlite3_close(db);
    CHECK(tables == 1);
}

TEST_CASE("an outbox written by a newer version is refused")
{
    hl7::test::temp_dir dir;
    {
        fixture f(db_in(dir));
        REQUIRE(f.store);
    }
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(db_in(dir).c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "UPDATE outbox_meta SET value = 2 WHERE key = 'schema'", nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
    fixture f(db_in(dir));
    CHECK(f.open_error == outbox_errc::incompatible_store);
}

TEST_CASE("an outbox in a directory that does not exist cannot be opened")
{
    hl7::test::temp_dir dir;
    fixture f((dir.path() / "missing" / "outbox.db").string());
    CHECK_FALSE(f.store);
    CHECK(f.open_error == outbox_errc::cannot_open);
}

// --- bad environments ----------------------------------------------------------------------------

TEST_CASE("a read-only directory gives read_only, for a new outbox and for an existing one")
{
    hl7::test::temp_dir dir;
    const fs::path ro = dir.path() / "ro";
    fs::create_directory(ro);
    const std::string existing = (ro / "existing.db").string();
    {
        fixture f(existing);
        REQUIRE(f.store);
        f.enqueue(store_message("RO1"));
    }
    ::chmod(dir.path().c_str(), 0755);
    ::chmod(existing.c_str(), 0644);
    ::chmod(ro.c_str(), 0555);
    // Root writes anywhere: the check runs as an unprivileged user in a child process.
    const std::string got = in_child([&]() -> std::string {
        if (::geteuid() == 0) {
            const passwd* nobody = ::getpwnam("nobody");
            if (nobody == nullptr || ::setgid(nobody->pw_gid) != 0 || ::setuid(nobody->pw_uid) != 0)
                return "skip";
        }
        std::string out;
        {
            fixture f((ro / "new.db").string());
            out += name_of(f.open_error) + " ";
        }
        {
            fixture f(existing);
            out += name_of(f.open_error);
        }
        return out;
    });
    ::chmod(ro.c_str(), 0755);
    if (got == "skip") {
        MESSAGE("cannot drop root privileges here to make a directory read-only; skipped");
        return;
    }
    const std::string ro_name = name_of(outbox_errc::read_only);
    CHECK(got == ro_name + " " + ro_name);
    // Nothing was lost: the existing outbox opens as before.
    fixture f(existing);
    REQUIRE(f.store);
    CHECK(f.select({}).size() == 1);
}

TEST_CASE("a full disk (a file size limit, RLIMIT_FSIZE, in a child) fails enqueues with store_full and loses none that succeeded")
{
    hl7::test::temp_dir dir;
    {
        fixture f(db_in(dir));
        REQUIRE(f.store);
        f.enqueue(store_message("F0"));
    }
    const std::string got = in_child([&]() -> std::string {
        std::signal(SIGXFSZ, SIG_IGN); // a write past the limit fails with EFBIG instead of killing us
        const rlim_t limit = 2 * 1024 * 1024;
        struct rlimit rl{limit, limit};
        if (::setrlimit(RLIMIT_FSIZE, &rl) != 0)
            return "setrlimit failed";
        fixture f(db_in(dir), hl7::outbox_synchronous::full);
        if (!f.store)
            return "open: " + f.open_error.message();
        int stored = 0;
        for (int i = 1; i < 1000; ++i) {
            auto m = store_message(hl7::test::label("F", i));
            m.bytes = store_bytes(m.control_id, 20000);
            auto [ec, r] = f.call<hl7::enqueue_result>([&](auto h) { f.store->enqueue(std::move(m), std::move(h)); });
            if (ec)
                return std::to_string(stored) + " " + name_of(ec);
            ++stored;
        }
        return "never full";
    });
    INFO("child: " << got);
    const auto space = got.find(' ');
    REQUIRE(space != std::string::npos);
    const int stored = std::stoi(got.substr(0, space));
    CHECK(got.substr(space + 1) == name_of(outbox_errc::store_full));
    CHECK(stored > 10);
    fixture f(db_in(dir));
    REQUIRE(f.store);
    const auto all = f.select({.limit = 2000});
    CHECK(all.size() == static_cast<std::size_t>(stored) + 1);
    // And it works again once there is room.
    CHECK(f.enqueue(store_message("F-after")).id > 0);
}
