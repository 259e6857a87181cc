// The PostgreSQL store against a server the test starts itself (test/support/postgres.hpp),
// each test in a schema of its own: the schema created and migrated, what it keeps, enqueue
// deduplication, leases (renewal, takeover after expiry, a stale token that writes nothing,
// SKIP LOCKED), outcomes by id, by MSH-10 and as a stream, and instances counted by their
// heartbeats. Skipped where PostgreSQL's server binaries are not installed.
#include "outbox/pg_store.hpp"

#include "support/postgres.hpp"
#include "support/store_harness.hpp"
#include "support/util.hpp"

#include <boost/asio/io_context.hpp>

#include <doctest/doctest.h>

#include <libpq-fe.h>

#include <atomic>
#include <optional>
#include <set>

using namespace std::chrono_literals;
namespace asio = boost::asio;
using hl7::outbox_errc;
using hl7::outbox_state;
using hl7::detail::lane_change;
using error_code = boost::system::error_code;
using time_point = hl7::outbox_clock::time_point;
using hl7::test::throwaway_postgres;

namespace {

const bool no_postgres = !throwaway_postgres::available();

throwaway_postgres& server()
{
    return hl7::test::shared_postgres();
}

std::string fresh_schema()
{
    return hl7::test::fresh_schema("store_test_");
}

using hl7::test::store_t0;
using hl7::test::store_destination;
using hl7::test::store_message;
using hl7::test::store_bytes;

struct fixture : hl7::test::store_harness {
    explicit fixture(const std::string& schema, std::size_t connections = 4)
        : store_harness([&](asio::any_io_executor ex) {
              return hl7::detail::open_pg_store(ex, server().uri(), {.schema = schema, .connections = connections});
          })
    {
    }
};

// A connection of the test's own, behind the store's back.
struct side_connection {
    side_connection() : conn(PQconnectdb(server().uri().c_str())) { REQUIRE(PQstatus(conn) == CONNECTION_OK); }
    ~side_connection() { PQfinish(conn); }
    void exec(const std::string& sql)
    {
        PGresult* r = PQexec(conn, sql.c_str());
        const auto status = PQresultStatus(r);
        PQclear(r);
        REQUIRE_MESSAGE((status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK), sql << ": " << PQerrorMessage(conn));
    }
    PGconn* conn;
};

} // namespace

TEST_SUITE_BEGIN("postgresql" * doctest::skip(no_postgres));

TEST_CASE("the schema is created once, opened again unchanged, and another schema or a newer version is refused")
{
    const std::string schema = fresh_schema();
    std::int64_t id = 0;
    {
        fixture f(schema);
        REQUIRE(f.store);
        id = f.enqueue(store_message("S1")).id;
    }
    fixture again(schema);
    REQUIRE(again.store);
    CHECK(again.get(id).control_id == "S1");
    CHECK(server().psql("SELECT version FROM " + schema + ".schema_version") == "1\n");

    const std::string foreign = fresh_schema();
    server().psql("CREATE SCHEMA " + foreign + "; CREATE TABLE " + foreign + ".patients(id int)");
    CHECK(fixture(foreign).open_error == outbox_errc::incompatible_store);
    CHECK(server().psql("SELECT count(*) FROM " + foreign + ".patients") == "0\n"); // left alone

    server().psql("UPDATE " + schema + ".schema_version SET version = 99");
    CHECK(fixture(schema).open_error == outbox_errc::incompatible_store);

    CHECK(fixture("Not-An-Identifier").open_error == outbox_errc::cannot_open);
    asio::io_context ctx;
    auto unreachable = hl7::detail::open_pg_store(ctx.get_executor(), "postgresql:///x?host=/nonexistent/dir", {});
    CHECK(unreachable.error() == outbox_errc::store_unavailable);
}

TEST_CASE("instances opening the same new schema at once all succeed, and the schema is made once")
{
    const std::string schema = fresh_schema();
    std::vector<std::thread> threads;
    std::atomic<int> opened{0};
    for (int i = 0; i < 4; ++i)
        threads.emplace_back([&] {
            asio::io_context ctx;
            auto s = hl7::detail::open_pg_store(ctx.get_executor(), server().uri(), {.schema = schema});
            if (s)
                ++opened;
        });
    for (auto& t : threads)
        t.join();
    CHECK(opened == 4);
    CHECK(server().psql("SELECT count(*) FROM " + schema + ".schema_version") == "1\n");
}

TEST_CASE("an enqueued message is stored as given, bytes that are not UTF-8 included, and ids grow")
{
    fixture f(fresh_schema());
    REQUIRE(f.store);
    auto m = store_message("E1", 3);
    m.bytes += "NTE|1||caf\xe9 \x01\r"; // Latin-1, and a control byte
    const auto r = f.enqueue(m);
    CHECK(!r.duplicate);
    CHECK(r.lane == 3);
    CHECK(r.state == outbox_state::queued);
    const auto rec = f.get(r.id);
    CHECK(rec.message == m.bytes);
    CHECK(rec.control_id == "E1");
    CHECK(rec.destination == store_destination);
    CHECK(rec.lane == 3);
    CHECK(rec.enqueued_at == store_t0);
    CHECK(rec.queued_at == store_t0);
    CHECK(rec.attempts == 0);
    CHECK(!rec.possible_duplicate);
    CHECK(rec.outcome == 0);
    CHECK(f.enqueue(store_message("E2")).id > r.id);
    auto [ec, lanes] = f.call<std::vector<std::uint32_t>>([&](auto h) { f.store->lanes(store_destination, std::move(h)); });
    CHECK(!ec);
    CHECK(lanes == std::vector<std::uint32_t>{0, 3});
}

TEST_CASE("the same message again is a duplicate; the same MSH-10 with other bytes is a conflict; another destination is new")
{
    fixture f(fresh_schema());
    REQUIRE(f.store);
    const auto first = f.enqueue(store_message("D1", 2));
    const auto again = f.enqueue(store_message("D1", 2));
    CHECK(again.duplicate);
    CHECK(again.id == first.id);
    CHECK(again.lane == 2);
    auto other = store_message("D1", 2);
    other.bytes += "NTE|1||changed\r";
    f.enqueue(other, outbox_errc::control_id_conflict);
    const auto elsewhere = f.enqueue(store_message("D1", 0, "127.0.0.1:2576"));
    CHECK(!elsewhere.duplicate);
    CHECK(elsewhere.id != first.id);
    CHECK(f.select({.destination = store_destination, .control_id = "D1"}).size() == 1);
    CHECK(f.select({}).size() == 2);
}

TEST_CASE("a lease is renewed by its owner with its token, held against others until it expires, then taken over with the next token")
{
    fixture f(fresh_schema());
    REQUIRE(f.store);
    const auto id = f.enqueue(store_message("L1")).id;
    auto [e1, a1] = f.claim(0, "a");
    REQUIRE(!e1);
    CHECK(a1.token == 1);
    CHECK(a1.expires > hl7::outbox_clock::now()); // the server's clock, not the caller's store_t0
    auto [e2, a2] = f.claim(0, "a");
    REQUIRE(!e2);
    CHECK(a2.token == 1);
    auto [held, none] = f.claim(0, "b");
    CHECK(held == outbox_errc::lease_held);
    // A lease of no time has expired at once: the next claimer takes it over.
    auto [e3, a3] = f.claim(0, "a", 0s);
    REQUIRE(!e3);
    auto [e4, b] = f.claim(0, "b");
    REQUIRE(!e4);
    CHECK(b.token == 2);
    CHECK(f.record(a1, {lane_change::mark_written(id, store_t0, false)}) == outbox_errc::lease_lost);
    CHECK(f.get(id).state == outbox_state::queued);
    CHECK(f.get(id).attempts == 0);
    CHECK(!f.record(b, {lane_change::mark_written(id, store_t0, false)}));
    CHECK(f.get(id).state == outbox_state::written);
    auto [e5, stale] = f.claim(0, "a");
    CHECK(e5 == outbox_errc::lease_held);
    CHECK(std::get<0>(f.call<>([&, lease = b](auto h) { f.store->release(lease, std::move(h)); })) == error_code{});
    auto [e6, a4] = f.claim(0, "a");
    REQUIRE(!e6);
    CHECK(a4.token == 3);
}

TEST_CASE("a claim skips a lane whose lease row another transaction has locked instead of waiting for it")
{
    const std::string schema = fresh_schema();
    fixture f(schema);
    REQUIRE(f.store);
    f.enqueue(store_message("K1"));
    side_connection other;
    other.exec("BEGIN");
    other.exec("SELECT * FROM " + schema + ".lanes WHERE lane = 0 FOR UPDATE");
    auto [locked, none] = f.claim(0, "a"); // completes (the call would time out if it waited)
    CHECK(locked == outbox_errc::lease_held);
    other.exec("COMMIT");
    auto [free, l] = f.claim(0, "a");
    CHECK(!free);
    CHECK(l.token == 1);
}

TEST_CASE("two stores claiming every lane at once never hold the same lane, and each lane has one owner")
{
    const std::string schema = fresh_schema();
    fixture a(schema), b(schema);
    REQUIRE(a.store);
    REQUIRE(b.store);
    for (std::uint32_t lane = 0; lane < 8; ++lane)
        a.enqueue(store_message(hl7::test::label("C", lane), lane));
    std::map<std::uint32_t, std::string> owners;
    int completions = 0;
    for (std::uint32_t lane = 0; lane < 8; ++lane) {
        for (auto* f : {&a, &b}) {
            const std::string owner = f == &a ? "a" : "b";
            f->store->claim({store_destination, lane}, owner, 30s, store_t0, [&, lane, owner](error_code ec, hl7::detail::lease l) {
                ++completions;
                if (!ec) {
                    CHECK_MESSAGE(!owners.contains(lane), "lane " << lane << " claimed twice");
                    owners[lane] = owner;
                    CHECK(l.token == 1);
                } else {
                    CHECK(ec == outbox_errc::lease_held);
                }
            });
        }
    }
    // Until all completed, or a deadline far beyond what a loaded machine needs.
    for (const auto deadline = std::chrono::steady_clock::now() + 60s;
         completions < 16 && std::chrono::steady_clock::now() < deadline;) {
        a.ctx.restart();
        a.ctx.run_for(5ms);
        b.ctx.restart();
        b.ctx.run_for(5ms);
    }
    CHECK(completions == 16);
    CHECK(owners.size() == 8);
}

TEST_CASE("a lane's changes apply in order, and outcomes are numbered for the stream, by id and by MSH-10")
{
    fixture f(fresh_schema());
    REQUIRE(f.store);
    hl7::test::check_changes_in_order(f);
}

TEST_CASE("outcomes recorded by two instances at once are numbered without gaps or repeats")
{
    const std::string schema = fresh_schema();
    fixture a(schema), b(schema);
    REQUIRE(a.store);
    REQUIRE(b.store);
    std::vector<std::int64_t> ids[2];
    for (int i = 0; i < 40; ++i)
        ids[i % 2].push_back(a.enqueue(store_message(hl7::test::label("N", i), static_cast<std::uint32_t>(i % 2))).id);
    auto [ea, la] = a.claim(0, "a");
    auto [eb, lb] = b.claim(1, "b");
    REQUIRE(!ea);
    REQUIRE(!eb);
    int completions = 0;
    for (std::size_t i = 0; i < ids[0].size(); ++i) {
        a.store->record(la, {lane_change::finish(ids[0][i], store_t0, outbox_state::acknowledged, "")}, [&](error_code ec) {
            CHECK(!ec);
            ++completions;
        });
        b.store->record(lb, {lane_change::finish(ids[1][i], store_t0, outbox_state::acknowledged, "")}, [&](error_code ec) {
            CHECK(!ec);
            ++completions;
        });
    }
    // Until all completed, or a deadline far beyond what a loaded machine needs.
    for (const auto deadline = std::chrono::steady_clock::now() + 60s;
         completions < 40 && std::chrono::steady_clock::now() < deadline;) {
        a.ctx.restart();
        a.ctx.run_for(5ms);
        b.ctx.restart();
        b.ctx.run_for(5ms);
    }
    REQUIRE(completions == 40);
    std::set<std::uint64_t> outcomes;
    for (const auto& r : a.select({.after_outcome = 0}))
        outcomes.insert(r.outcome);
    CHECK(outcomes.size() == 40);
    CHECK(*outcomes.begin() == 1);
    CHECK(*outcomes.rbegin() == 40);
}

TEST_CASE("retry queues dead letters again out of the outcome stream; purge deletes only final ones; status shows the lease")
{
    fixture f(fresh_schema());
    REQUIRE(f.store);
    const auto dead = f.enqueue(store_message("P1")).id;
    const auto done = f.enqueue(store_message("P2")).id;
    const auto waiting = f.enqueue(store_message("P3")).id;
    auto [ec, l] = f.claim(0, "owner-1");
    REQUIRE(!ec);
    REQUIRE(!f.record(l, {lane_change::finish(dead, store_t0, outbox_state::failed, "gave up"),
                          lane_change::finish(done, store_t0, outbox_state::acknowledged, ""),
                          lane_change::mark_written(waiting, store_t0, true)}));
    const auto status = f.call<std::vector<hl7::outbox_lane_status>>([&](auto h) { f.store->status(std::move(h)); });
    const auto& lanes = std::get<1>(status);
    REQUIRE(lanes.size() == 1);
    CHECK(lanes[0].failed == 1);
    CHECK(lanes[0].acknowledged == 1);
    CHECK(lanes[0].written == 1);
    CHECK(lanes[0].possible_duplicates == 1);
    CHECK(lanes[0].oldest_pending == store_t0);
    CHECK(lanes[0].lease_owner == "owner-1");
    CHECK(lanes[0].lease_token == 1);
    CHECK(lanes[0].lease_expires.has_value());
    auto [rec, retried] = f.call<std::uint64_t>([&](auto h) { f.store->retry({dead, done}, false, store_t0 + 1s, std::move(h)); });
    CHECK(!rec);
    CHECK(retried == 1);
    CHECK(f.get(dead).state == outbox_state::queued);
    CHECK(f.get(dead).outcome == 0);
    CHECK(f.get(dead).queued_at == store_t0 + 1s);
    auto [pec, purged] = f.call<std::uint64_t>([&](auto h) { f.store->purge(store_t0 + 1h, std::move(h)); });
    CHECK(!pec);
    CHECK(purged == 1);
    CHECK(f.select({}).size() == 2);
}

TEST_CASE("instances are counted by their heartbeats until they expire or leave")
{
    const std::string schema = fresh_schema();
    fixture f(schema);
    REQUIRE(f.store);
    CHECK(f.heartbeat("a", 30s) == 1);
    CHECK(f.heartbeat("b", 30s) == 2);
    CHECK(f.heartbeat("a", 30s) == 2);
    CHECK(f.heartbeat("b", 0s) == 1); // b leaves: it counts a, not itself
    CHECK(f.heartbeat("a", 30s) == 1);
}

TEST_CASE("operations after close complete with closed")
{
    fixture f(fresh_schema());
    REQUIRE(f.store);
    bool closed = false;
    f.store->close([&] { closed = true; });
    auto [ec, r] = f.call<hl7::enqueue_result>([&](auto h) { f.store->enqueue(store_message("X1"), std::move(h)); });
    CHECK(ec == outbox_errc::closed);
    CHECK(closed);
}

TEST_CASE("a restarted server fails what was under way with store_unavailable, then the store reconnects")
{
    // Durable: an immediate stop must not lose what was committed (synchronous_commit on).
    auto pg = throwaway_postgres::start(true);
    asio::io_context ctx;
    auto opened = hl7::detail::open_pg_store(ctx.get_executor(), pg.uri(), {.schema = "restart"});
    REQUIRE(opened);
    auto store = std::move(opened).value();
    auto enqueue = [&](const std::string& id) {
        std::optional<error_code> got;
        store->enqueue(store_message(id), [&](error_code ec, hl7::enqueue_result) { got = ec; });
        ctx.restart();
        while (!got && ctx.run_one_for(20s) > 0) {
        }
        REQUIRE(got.has_value());
        return *got;
    };
    CHECK(!enqueue("U1"));
    pg.kill();
    CHECK(enqueue("U2") == outbox_errc::store_unavailable);
    pg.restart();
    error_code ec = outbox_errc::store_unavailable;
    for (int i = 0; i < 20 && ec == outbox_errc::store_unavailable; ++i)
        ec = enqueue("U3"); // each try waits out the connection backoff
    CHECK(!ec);
    CHECK(pg.psql("SELECT count(*) FROM restart.messages") == "2\n");
    bool closed = false;
    store->close([&] { closed = true; });
    ctx.restart();
    ctx.run_for(5s);
    CHECK(closed);
}

TEST_SUITE_END();
