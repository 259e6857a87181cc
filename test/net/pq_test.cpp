// The libpq connection on Asio, against a PostgreSQL server the test starts itself.
#include "net/pq_connection.hpp"

#include "support/async_util.hpp"
#include "support/postgres.hpp"

#include <doctest/doctest.h>

#include <boost/asio/use_awaitable.hpp>

#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace asio = boost::asio;
using boost::system::error_code;
using hl7::detail::pq_connection;
using hl7::detail::pq_error;
using hl7::detail::pq_result;

namespace {

using hl7::test::throwaway_postgres;

throwaway_postgres* server()
{
    return &hl7::test::shared_postgres();
}

const bool no_postgres = !throwaway_postgres::available();

// A callback operation as an awaitable of its arguments. A plain function, so that no
// temporary of a coroutine lives across its co_await (GCC 12).
template <class... Args, class Start>
asio::awaitable<std::tuple<Args...>> await(Start start)
{
    return asio::async_initiate<const asio::use_awaitable_t<>&, void(std::tuple<Args...>)>(
        [start = std::move(start)](auto h) mutable {
            auto shared = std::make_shared<decltype(h)>(std::move(h));
            start([shared](Args... args) { std::move(*shared)(std::make_tuple(std::move(args)...)); });
        },
        asio::use_awaitable);
}

asio::awaitable<std::tuple<error_code>> connect(const std::shared_ptr<pq_connection>& c, std::string uri)
{
    return await<error_code>([c, uri](auto done) { c->async_connect(uri, done); });
}

asio::awaitable<std::tuple<error_code, pq_result>> exec(const std::shared_ptr<pq_connection>& c, std::string sql,
                                                         std::vector<std::optional<std::string>> params = {})
{
    return await<error_code, pq_result>([c, sql, params](auto done) { c->async_exec(sql, params, done); });
}

asio::awaitable<std::tuple<error_code, std::string, std::string>> notification(const std::shared_ptr<pq_connection>& c)
{
    return await<error_code, std::string, std::string>([c](auto done) { c->async_notification(done); });
}

// A connected connection; fails the test otherwise.
asio::awaitable<std::shared_ptr<pq_connection>> connected(const hl7::test::throwaway_postgres& pg)
{
    auto c = std::make_shared<pq_connection>(co_await asio::this_coro::executor);
    auto connecting = connect(c, pg.uri());
    const auto result = co_await std::move(connecting);
    const error_code ec = std::get<0>(result);
    REQUIRE_MESSAGE(!ec, ec.message() << ": " << c->error_message());
    co_return c;
}

} // namespace

TEST_CASE("statements with text parameters run and their rows read back, NULL told from empty" * doctest::skip(no_postgres))
{
    auto* pg = server();
    hl7::test::run_async([pg]() -> asio::awaitable<void> {
        auto c = co_await connected(*pg);
        auto creating = exec(c, "CREATE TABLE t1 (id bigint PRIMARY KEY, body text)");
        const auto [created, none] = co_await std::move(creating);
        REQUIRE_MESSAGE(!created, c->error_message());
        for (int i = 1; i <= 3; ++i) {
            auto inserting = exec(c, "INSERT INTO t1 VALUES ($1, $2)",
                                  {std::to_string(i), i == 2 ? std::nullopt : std::optional<std::string>(i == 3 ? "" : "a|b")});
            const auto [ec, r] = co_await std::move(inserting);
            REQUIRE_MESSAGE(!ec, c->error_message());
            CHECK(r.affected() == 1);
        }
        auto selecting = exec(c, "SELECT id, body FROM t1 ORDER BY id");
        const auto [ec, rows] = co_await std::move(selecting);
        REQUIRE_FALSE(ec);
        REQUIRE(rows.rows() == 3);
        CHECK(rows.columns() == 2);
        CHECK(rows.get(0, 0) == "1");
        CHECK(rows.get(0, 1) == "a|b");
        CHECK(rows.is_null(1, 1));
        CHECK_FALSE(rows.is_null(2, 1));
        CHECK(rows.get(2, 1).empty());
    }, std::chrono::seconds(30));
}

TEST_CASE("a duplicate key is named, a bad statement is a failed query, and the connection goes on" * doctest::skip(no_postgres))
{
    auto* pg = server();
    hl7::test::run_async([pg]() -> asio::awaitable<void> {
        auto c = co_await connected(*pg);
        auto creating = exec(c, "CREATE TABLE t2 (id bigint PRIMARY KEY)");
        co_await std::move(creating);
        auto first = exec(c, "INSERT INTO t2 VALUES (1)");
        const auto [e1, r1] = co_await std::move(first);
        CHECK_FALSE(e1);
        auto again = exec(c, "INSERT INTO t2 VALUES (1)");
        const auto [e2, r2] = co_await std::move(again);
        CHECK(e2 == pq_error::unique_violation);
        CHECK(c->error_message().find("duplicate key") != std::string::npos);
        auto bad = exec(c, "SELEC nonsense");
        const auto [e3, r3] = co_await std::move(bad);
        CHECK(e3 == pq_error::query_failed);
        CHECK(c->error_message().find("syntax error") != std::string::npos);
        auto count = exec(c, "SELECT count(*) FROM t2");
        const auto [e4, r4] = co_await std::move(count);
        REQUIRE_FALSE(e4);
        CHECK(r4.get(0, 0) == "1");
    }, std::chrono::seconds(30));
}

TEST_CASE("a notification on a channel listened to is received" * doctest::skip(no_postgres))
{
    auto* pg = server();
    hl7::test::run_async([pg]() -> asio::awaitable<void> {
        auto listener = co_await connected(*pg);
        auto talker = co_await connected(*pg);
        auto listening = exec(listener, "LISTEN hl7_wake");
        const auto [le, lr] = co_await std::move(listening);
        REQUIRE_FALSE(le);
        auto notifying = exec(talker, "SELECT pg_notify('hl7_wake', 'lane 3')");
        const auto [ne, nr] = co_await std::move(notifying);
        REQUIRE_FALSE(ne);
        auto waiting = notification(listener);
        const auto [ec, channel, payload] = co_await std::move(waiting);
        CHECK_FALSE(ec);
        CHECK(channel == "hl7_wake");
        CHECK(payload == "lane 3");
    }, std::chrono::seconds(30));
}

TEST_CASE("a refused connection is a named error with libpq's explanation")
{
    hl7::test::run_async([]() -> asio::awaitable<void> {
        auto c = std::make_shared<pq_connection>(co_await asio::this_coro::executor);
        auto connecting = connect(c, "postgresql://hl7@/postgres?host=/nonexistent-dir&port=1&connect_timeout=2");
        const auto [ec] = co_await std::move(connecting);
        CHECK(ec == pq_error::connect_failed);
        CHECK_FALSE(c->error_message().empty());
        auto bad_uri = std::make_shared<pq_connection>(co_await asio::this_coro::executor);
        auto parsing = connect(bad_uri, "postgresql://[not a uri");
        const auto [ec2] = co_await std::move(parsing);
        CHECK(ec2 == pq_error::connect_failed);
    });
}

TEST_CASE("closing completes a pending wait with operation_aborted" * doctest::skip(no_postgres))
{
    auto* pg = server();
    hl7::test::run_async([pg]() -> asio::awaitable<void> {
        auto c = co_await connected(*pg);
        auto listening = exec(c, "LISTEN nobody_talks");
        co_await std::move(listening);
        auto waiting = notification(c);
        asio::post(co_await asio::this_coro::executor, [c] { c->close(); });
        const auto [ec, channel, payload] = co_await std::move(waiting);
        CHECK(ec == asio::error::operation_aborted);
    }, std::chrono::seconds(30));
}

TEST_CASE("a server that goes away is a lost connection, and a new connection works once it is back" * doctest::skip(no_postgres))
{
    auto* pg = server();
    hl7::test::run_async([pg]() -> asio::awaitable<void> {
        auto c = co_await connected(*pg);
        pg->kill();
        auto after = exec(c, "SELECT 1");
        const auto [ec, r] = co_await std::move(after);
        CHECK(ec == pq_error::connection_lost);
        pg->restart();
        auto fresh = co_await connected(*pg);
        auto again = exec(fresh, "SELECT 41 + 1");
        const auto [ec2, r2] = co_await std::move(again);
        REQUIRE_FALSE(ec2);
        CHECK(r2.get(0, 0) == "42");
    }, std::chrono::seconds(60));
}

// libpq closes its socket as soon as it finds the connection gone, so the next socket the
// process opens may get the same descriptor number while the dead connection's object is still
// alive. That object going must not take the new socket's readiness notifications with it.
TEST_CASE("a dropped connection destroyed after a new connection reused its descriptor number leaves the new one working" *
          doctest::skip(no_postgres))
{
    auto* pg = server();
    hl7::test::run_async([pg]() -> asio::awaitable<void> {
        auto killer = co_await connected(*pg);
        auto dropped = co_await connected(*pg);
        auto asking = exec(dropped, "SELECT pg_backend_pid()");
        const auto [pe, pid] = co_await std::move(asking);
        REQUIRE_FALSE(pe);
        // Waits (up to 10 s) until the backend is gone.
        auto terminating = exec(killer, "SELECT pg_terminate_backend($1, 10000)", {std::string(pid.get(0, 0))});
        const auto [te, terminated] = co_await std::move(terminating);
        REQUIRE_MESSAGE(!te, killer->error_message());
        REQUIRE(terminated.get(0, 0) == "t");
        // The first statement may get the server's farewell, the second finds the socket closed:
        // libpq has dropped its descriptor either way.
        for (int i = 0; i < 2; ++i) {
            auto after = exec(dropped, "SELECT 1");
            const auto [ec, r] = co_await std::move(after);
            CHECK(ec == pq_error::connection_lost);
        }
        auto fresh = co_await connected(*pg); // its socket takes the lowest free number: the one just closed
        dropped.reset();
        auto again = exec(fresh, "SELECT 41 + 1");
        const auto [ec, r] = co_await std::move(again);
        REQUIRE_MESSAGE(!ec, fresh->error_message());
        CHECK(r.get(0, 0) == "42");
    }, std::chrono::seconds(30));
}
