// The outbox on PostgreSQL, two instances in one process sharing a schema of a server the test
// starts itself (test/support/postgres.hpp): what one instance stores wakes the other through
// LISTEN/NOTIFY, long before its poll; a cut listening connection is made again; polling
// covers what a dead listener misses. Instance A only enqueues and waits for outcomes, B
// delivers: A's in-process wake-ups never reach B. Skipped where PostgreSQL's server binaries
// are not installed.
#include <hl7/outbox/outbox.hpp>

#include "support/async_util.hpp"
#include "support/postgres.hpp"
#include "support/recording_server.hpp"
#include "support/util.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <doctest/doctest.h>

#include <libpq-fe.h>

#include <atomic>
#include <optional>

using namespace std::chrono_literals;
namespace asio = boost::asio;
using hl7::outbox_state;
using hl7::test::run_async;
using hl7::test::sleep_for;
using hl7::test::throwaway_postgres;
using error_code = boost::system::error_code;

namespace {

const bool no_postgres = !throwaway_postgres::available();

throwaway_postgres& server()
{
    return hl7::test::shared_postgres();
}

std::string fresh_schema()
{
    return hl7::test::fresh_schema("outbox_test_");
}

// Far longer than any wait of the tests: what they see within `soon` was not found by a poll.
constexpr auto no_poll = 60s;
constexpr auto soon = 10s;

hl7::outbox open_box(asio::any_io_executor ex, const std::string& schema, std::chrono::milliseconds poll_interval,
                     std::string uri = server().uri())
{
    auto box = hl7::outbox::open(
        ex, {.location = std::move(uri), .poll_interval = poll_interval, .lease_ttl = 30s, .schema = schema, .connections = 4});
    REQUIRE_MESSAGE(box.has_value(), box.error().message());
    return std::move(box).value();
}

const hl7::enqueue_options two_lanes{.partition_key = "PID.3.1", .lanes = 2};

hl7::message make_message(const std::string& id, const std::string& patient)
{
    return hl7::message::parse("MSH|^~\\&|SND|F|RCV|F|20240101||ADT^A01|" + id + "|P|2.5.1\rPID|1||" + patient +
                               "^^^FAC^MR||DOE^JOHN\r")
        .value();
}

// A patient whose messages go to `lane` of two_lanes.
std::string patient_in(std::uint32_t lane)
{
    for (int i = 0;; ++i) {
        const std::string patient = hl7::test::label("P", i);
        if (hl7::outbox_lane(make_message("X", patient), two_lanes).value() == lane)
            return patient;
    }
}

// Coroutines here take their arguments by value, and their callers name each awaitable before
// awaiting it: no temporary lives across a co_await (GCC 12).
asio::awaitable<void> enqueue(hl7::outbox& box, hl7::outbox_destination to, std::string id, std::uint32_t lane)
{
    auto enqueuing = box.enqueue(to, make_message(id, patient_in(lane)), two_lanes);
    const auto r = co_await std::move(enqueuing);
    REQUIRE_MESSAGE(r.has_value(), r.error().message());
    CHECK(r.value().lane == lane);
}

// The next outcome after `after`, waited for at most `limit`: operation_aborted if none came.
asio::awaitable<std::pair<error_code, hl7::outbox_record>> next_outcome_within(hl7::outbox& box, std::uint64_t after,
                                                                             std::chrono::seconds limit)
{
    asio::cancellation_signal cancel;
    asio::steady_timer timer(co_await asio::this_coro::executor, limit);
    timer.async_wait([&cancel](error_code ec) {
        if (!ec)
            cancel.emit(asio::cancellation_type::terminal);
    });
    auto waiting = box.async_next_outcome(after, asio::bind_cancellation_slot(cancel.slot(), asio::as_tuple(asio::use_awaitable)));
    auto [ec, r] = co_await std::move(waiting);
    timer.cancel();
    co_return std::pair<error_code, hl7::outbox_record>{ec, std::move(r)};
}

// The outcome of `id` (MSH-10), the next one after `after`, within `soon`.
asio::awaitable<std::uint64_t> expect_outcome(hl7::outbox& box, std::uint64_t after, std::string id)
{
    auto waiting = next_outcome_within(box, after, soon);
    const auto [ec, r] = co_await std::move(waiting);
    const error_code failed = ec;
    REQUIRE_MESSAGE(!failed, "no outcome for " << id << ": " << failed.message());
    CHECK(r.control_id == id);
    CHECK(r.state == outbox_state::acknowledged);
    co_return r.outcome;
}

// The server processes of the instances' listening connections on `schema`.
std::vector<std::string> listeners(const std::string& schema)
{
    const std::string out = server().psql("SELECT pid FROM pg_stat_activity WHERE query = 'LISTEN " + schema + "'");
    std::vector<std::string> pids;
    std::size_t at = 0;
    while (at < out.size()) {
        const auto end = out.find('\n', at);
        const std::string line = out.substr(at, end == std::string::npos ? std::string::npos : end - at);
        if (!line.empty())
            pids.push_back(line);
        at = end == std::string::npos ? out.size() : end + 1;
    }
    return pids;
}

// Waits until `n` instances listen on `schema`, none of them one of `gone`; their pids.
asio::awaitable<std::vector<std::string>> wait_listening(std::string schema, std::size_t n,
                                                         std::vector<std::string> gone)
{
    const auto deadline = std::chrono::steady_clock::now() + 20s;
    for (;;) {
        auto pids = listeners(schema);
        const bool fresh = std::none_of(pids.begin(), pids.end(), [&](const std::string& p) {
            return std::find(gone.begin(), gone.end(), p) != gone.end();
        });
        if (pids.size() == n && fresh)
            co_return pids;
        REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline, "listening connections: " << pids.size());
        auto pausing = sleep_for(20ms);
        co_await std::move(pausing);
    }
}

// B delivering `to` until the test is over, then stopped and both instances closed.
struct delivery {
    hl7::outbox& b;
    asio::cancellation_signal stop;
    std::optional<error_code> result;

    delivery(hl7::outbox& box, const hl7::outbox_destination& to) : b(box)
    {
        hl7::outbox_run_options o;
        o.until_empty = false;
        o.connection.connect_timeout = 2s;
        b.async_run(to, o, asio::bind_cancellation_slot(stop.slot(), [this](error_code ec) { result = ec; }));
    }

    asio::awaitable<void> finish(hl7::outbox& a)
    {
        stop.emit(asio::cancellation_type::terminal);
        const auto deadline = std::chrono::steady_clock::now() + soon;
        while (!result && std::chrono::steady_clock::now() < deadline)
        {
            auto pausing = sleep_for(10ms);
            co_await std::move(pausing);
        }
        REQUIRE_MESSAGE(result.has_value(), "the run did not stop");
        CHECK(*result == asio::error::operation_aborted);
        auto closing_b = b.close();
        co_await std::move(closing_b);
        auto closing_a = a.close();
        co_await std::move(closing_a);
    }
};

} // namespace

TEST_SUITE_BEGIN("postgresql" * doctest::skip(no_postgres));

TEST_CASE("an idle instance is woken by another's enqueue, in a lane it holds and in a new one, and the other's waiter by the outcome")
{
    hl7::test::recording_server peer;
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        const std::string schema = fresh_schema();
        hl7::outbox a = open_box(ex, schema, no_poll);
        hl7::outbox b = open_box(ex, schema, no_poll);
        const hl7::outbox_destination to{.host = "127.0.0.1", .port = static_cast<std::uint16_t>(std::stoi(peer.port()))};
        delivery run(b, to);
        auto listening = wait_listening(schema, 2, {});
        co_await std::move(listening);

        auto enqueuing_m1 = enqueue(a, to, "M1", 0);
        co_await std::move(enqueuing_m1);
        auto first = expect_outcome(a, 0, "M1");
        const std::uint64_t o1 = co_await std::move(first);
        auto settling = sleep_for(200ms);
        co_await std::move(settling); // B's lane goes idle: only a wake-up makes it look again
        auto enqueuing_m2 = enqueue(a, to, "M2", 0);
        co_await std::move(enqueuing_m2);
        auto second = expect_outcome(a, o1, "M2");
        const std::uint64_t o2 = co_await std::move(second);
        auto enqueuing_m3 = enqueue(a, to, "M3", 1);
        co_await std::move(enqueuing_m3);
        auto third = expect_outcome(a, o2, "M3");
        co_await std::move(third);
        CHECK(peer.received() == std::vector<std::string>{"M1", "M2", "M3"});

        auto finishing = run.finish(a);
        co_await std::move(finishing);
    }, 60s);
}

TEST_CASE("a cut listening connection is made again: what was notified meanwhile is delivered, and notifications wake again")
{
    hl7::test::recording_server peer;
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        const std::string schema = fresh_schema();
        hl7::outbox a = open_box(ex, schema, no_poll);
        hl7::outbox b = open_box(ex, schema, no_poll);
        const hl7::outbox_destination to{.host = "127.0.0.1", .port = static_cast<std::uint16_t>(std::stoi(peer.port()))};
        delivery run(b, to);
        auto listening = wait_listening(schema, 2, {});
        const std::vector<std::string> before = co_await std::move(listening);

        (void)server().psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'LISTEN " + schema + "'");
        auto enqueuing_m1 = enqueue(a, to, "M1", 0);
        co_await std::move(enqueuing_m1);
        auto listening_again = wait_listening(schema, 2, before);
        co_await std::move(listening_again);
        auto first = expect_outcome(a, 0, "M1");
        const std::uint64_t o1 = co_await std::move(first);
        auto settling = sleep_for(200ms);
        co_await std::move(settling);
        auto enqueuing_m2 = enqueue(a, to, "M2", 0);
        co_await std::move(enqueuing_m2);
        auto second = expect_outcome(a, o1, "M2");
        co_await std::move(second);
        CHECK(peer.received() == std::vector<std::string>{"M1", "M2"});

        auto finishing = run.finish(a);
        co_await std::move(finishing);
    }, 90s);
}

TEST_CASE("while its listening connection cannot be made again, an instance delivers what it polls, then listens again")
{
    hl7::test::recording_server peer;
    // The instances in a database of their own, that refuses new connections for a while (a
    // database cannot refuse them while a connection of the test's own is in it).
    const std::string database = "notify_" + std::to_string(::getpid());
    (void)server().psql("CREATE DATABASE " + database);
    std::string uri = server().uri();
    uri.replace(uri.find("/postgres?"), 10, "/" + database + "?");
    PGconn* side = PQconnectdb(server().uri().c_str());
    REQUIRE(PQstatus(side) == CONNECTION_OK);
    auto exec = [side](const std::string& sql) {
        PGresult* r = PQexec(side, sql.c_str());
        const auto status = PQresultStatus(r);
        PQclear(r);
        REQUIRE_MESSAGE((status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK), sql << ": " << std::string(PQerrorMessage(side)));
    };
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        const std::string schema = fresh_schema();
        hl7::outbox a = open_box(ex, schema, no_poll, uri);
        hl7::outbox b = open_box(ex, schema, 200ms, uri);
        const hl7::outbox_destination to{.host = "127.0.0.1", .port = static_cast<std::uint16_t>(std::stoi(peer.port()))};
        delivery run(b, to);
        auto listening = wait_listening(schema, 2, {});
        co_await std::move(listening);
        // Delivered once, so that the pools hold the connections delivery needs.
        auto enqueuing_m1 = enqueue(a, to, "M1", 0);
        co_await std::move(enqueuing_m1);
        auto first = expect_outcome(a, 0, "M1");
        const std::uint64_t o1 = co_await std::move(first);

        exec("ALTER DATABASE " + database + " WITH ALLOW_CONNECTIONS false");
        exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = 'LISTEN " + schema + "'");
        auto enqueuing_m2 = enqueue(a, to, "M2", 0);
        co_await std::move(enqueuing_m2);
        const auto deadline = std::chrono::steady_clock::now() + soon;
        while (peer.count() < 2 && std::chrono::steady_clock::now() < deadline) {
            auto pausing = sleep_for(10ms);
            co_await std::move(pausing);
        }
        CHECK(peer.received() == std::vector<std::string>{"M1", "M2"});
        const std::string counting = "SELECT count(*) FROM pg_stat_activity WHERE query = 'LISTEN " + schema + "'";
        PGresult* listeners_left = PQexec(side, counting.c_str());
        const std::string count = PQntuples(listeners_left) == 1 ? PQgetvalue(listeners_left, 0, 0) : "?";
        PQclear(listeners_left);
        CHECK(count == "0"); // so M2 was found by B's poll

        exec("ALTER DATABASE " + database + " WITH ALLOW_CONNECTIONS true");
        auto listening_again = wait_listening(schema, 2, {});
        co_await std::move(listening_again);
        auto second = expect_outcome(a, o1, "M2"); // A's waiter, woken by the resumed listening
        co_await std::move(second);

        auto finishing = run.finish(a);
        co_await std::move(finishing);
    }, 90s);
    exec("ALTER DATABASE " + database + " WITH ALLOW_CONNECTIONS true");
    PQfinish(side);
}

TEST_SUITE_END();
