// The outbox end to end: real files, the library's client, in-process peers that answer,
// reject, stay silent or refuse. Every coroutine runs under a hard deadline (run_async).
#include <hl7/net/server.hpp>
#include <hl7/outbox/outbox.hpp>

#include "support/async_util.hpp"
#include "support/peer.hpp"
#include "support/tool_util.hpp"
#include "support/util.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/experimental/awaitable_operators.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/use_future.hpp>

#include <doctest/doctest.h>

#include <sqlite3.h>

#include <map>
#include <mutex>
#include <set>

using namespace std::chrono_literals;
namespace asio = boost::asio;
using hl7::outbox_errc;
using hl7::outbox_state;
using hl7::test::run_async;
using hl7::test::sleep_for;
using error_code = boost::system::error_code;

namespace {

hl7::message make_message(const std::string& id, const std::string& patient = "P1")
{
    return hl7::message::parse("MSH|^~\\&|SND|F|RCV|F|20240101||ADT^A01|" + id + "|P|2.5.1\rPID|1||" + patient +
                               "^^^FAC^MR||DOE^JOHN\r")
        .value();
}

hl7::outbox open_box(asio::any_io_executor ex, const hl7::test::temp_dir& dir,
                     std::function<void(const hl7::outbox_event&)> observer = {})
{
    auto box = hl7::outbox::open(ex, {.location = (dir.path() / "outbox.db").string(),
                                      .synchronous = hl7::outbox_synchronous::normal,
                                      .poll_interval = 50ms,
                                      .lease_ttl = 3s,
                                      .observer = std::move(observer)});
    REQUIRE(box.has_value());
    return std::move(box).value();
}

hl7::outbox_run_options quick(bool until_empty = true)
{
    hl7::outbox_run_options o;
    // Where a test expects answers, a loaded machine must not time them out: 5 s. The tests of
    // timeouts set their own.
    o.connection.connect_timeout = 5s;
    o.connection.ack_timeout = 5s;
    o.connection.reconnect = {.max_attempts = 0, .initial = 20ms, .max = 100ms, .factor = 2.0, .jitter = 0};
    o.retry = {.initial = 30ms, .max = 100ms, .factor = 2.0, .jitter = 0};
    o.until_empty = until_empty;
    return o;
}

// The library's server, recording the MSH-10 of every message in order and the connections.
struct recording_server {
    explicit recording_server(asio::any_io_executor ex,
                              std::function<hl7::verdict(const hl7::message&)> verdict = {})
        : log(std::make_shared<shared>())
    {
        hl7::server_options o{.host = "127.0.0.1", .port = 0};
        o.handler = [log = log, verdict](const hl7::message& m, const hl7::peer_info&) -> asio::awaitable<hl7::outcome::result<hl7::message>> {
            {
                std::lock_guard lock(log->mutex);
                log->received.emplace_back(m.control_id());
            }
            const hl7::verdict v = verdict ? verdict(m) : hl7::verdict::accept;
            co_return hl7::make_ack(m, v, {.text = v == hl7::verdict::accept ? "" : "refused by the test"});
        };
        o.observer = [log = log](const hl7::server_event& e) {
            if (e.what == hl7::server_event::kind::accepted) {
                std::lock_guard lock(log->mutex);
                ++log->connections;
            }
        };
        server.emplace(hl7::server::create(ex, std::move(o)).value());
    }

    std::vector<std::string> received() const
    {
        std::lock_guard lock(log->mutex);
        return log->received;
    }
    std::size_t connections() const
    {
        std::lock_guard lock(log->mutex);
        return log->connections;
    }
    std::uint16_t port() const { return server->local_endpoint().port(); }

    struct shared {
        std::mutex mutex;
        std::vector<std::string> received;
        std::size_t connections = 0;
    };
    std::shared_ptr<shared> log;
    std::optional<hl7::server> server;
};

// Enqueues `ids` in order; returns their outbox ids.
asio::awaitable<std::vector<std::int64_t>> enqueue_all(hl7::outbox& box, const hl7::outbox_destination& to,
                                                      const std::vector<std::string>& ids,
                                                      const hl7::enqueue_options& options)
{
    std::vector<std::int64_t> out;
    for (const std::string& id : ids) {
        hl7::message m = make_message(id, hl7::test::label("P", out.size() % 5));
        auto r = co_await box.enqueue(to, std::move(m), options);
        REQUIRE_MESSAGE(r.has_value(), r.error().message());
        out.push_back(r.value().id);
    }
    co_return out;
}

std::vector<std::string> numbered(const std::string& prefix, int n)
{
    std::vector<std::string> v;
    for (int i = 1; i <= n; ++i)
        v.push_back(prefix + std::to_string(i));
    return v;
}

asio::awaitable<hl7::outbox_record> get(hl7::outbox& box, std::int64_t id)
{
    auto [ec, r] = co_await box.async_get(id, asio::as_tuple(asio::use_awaitable));
    const error_code failed = ec; // a structured binding cannot be captured by the message's lambda
    REQUIRE_MESSAGE(!failed, failed.message());
    co_return r;
}

// Sets a message's state in the file directly, as a crash would have left it.
void set_state(const hl7::test::temp_dir& dir, std::int64_t id, outbox_state state)
{
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open((dir.path() / "outbox.db").c_str(), &db) == SQLITE_OK);
    const std::string sql = "UPDATE outbox_messages SET state = " + std::to_string(static_cast<int>(state)) +
                            ", attempts = 1 WHERE id = " + std::to_string(id);
    CHECK(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
}

} // namespace

TEST_CASE("messages enqueued for a destination are delivered in order, and their outcomes recorded and streamed")
{
    hl7::test::temp_dir dir;
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        recording_server peer(ex);
        auto box = open_box(ex, dir);
        const hl7::outbox_destination to{.host = "127.0.0.1", .port = peer.port()};
        const auto names = numbered("M", 20);
        const hl7::enqueue_options one_lane{};
        const auto ids = co_await enqueue_all(box, to, names, one_lane);
        const auto options = quick();
        auto ran = co_await box.run(to, options);
        CHECK(ran.has_value());
        CHECK(peer.received() == names);
        CHECK(peer.connections() == 1);
        std::uint64_t cursor = 0;
        for (std::size_t i = 0; i < ids.size(); ++i) {
            auto o = co_await box.next_outcome(cursor);
            REQUIRE(o.has_value());
            CHECK(o.value().id == ids[i]);
            CHECK(o.value().control_id == names[i]);
            CHECK(o.value().state == outbox_state::acknowledged);
            CHECK(o.value().code == hl7::ack_code::AA);
            CHECK(o.value().ack.find("MSA|AA|" + names[i]) != std::string::npos);
            CHECK(o.value().attempts == 1);
            CHECK_FALSE(o.value().possible_duplicate);
            CHECK(o.value().finished_at.has_value());
            CHECK(o.value().outcome > cursor);
            cursor = o.value().outcome;
        }
        auto [lec, latest] = co_await box.async_latest_outcome(asio::as_tuple(asio::use_awaitable));
        CHECK(!lec);
        CHECK(latest == cursor);
        auto [sec, status] = co_await box.async_status(asio::as_tuple(asio::use_awaitable));
        CHECK(!sec);
        REQUIRE(status.size() == 1);
        CHECK(status[0].acknowledged == 20);
        CHECK(status[0].lease_owner == ""); // released when the run ended
        co_await box.close();
        co_await peer.server->async_close(asio::use_awaitable);
    }, 30s);
}

TEST_CASE("next_outcome waits for the run of the same outbox, and a restarted application finds what it missed")
{
    hl7::test::temp_dir dir;
    std::uint64_t seen = 0;
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        recording_server peer(ex);
        auto box = open_box(ex, dir);
        const hl7::outbox_destination to{.host = "127.0.0.1", .port = peer.port()};
        const hl7::enqueue_options one_lane{};
        const auto names = numbered("N", 3);
        const auto ids = co_await enqueue_all(box, to, names, one_lane);
        auto options = quick(false);
        box.async_run(to, options, asio::detached);
        auto first = co_await box.next_outcome(0); // waits: the run delivers meanwhile
        REQUIRE(first.has_value());
        CHECK(first.value().id == ids[0]);
        seen = first.value().outcome;
        // The application goes away here, having seen one outcome; the others are recorded.
        for (;;) {
            auto [ec, s] = co_await box.async_status(asio::as_tuple(asio::use_awaitable));
            if (!ec && !s.empty() && s[0].acknowledged == 3)
                break;
            co_await sleep_for(10ms);
        }
        co_await box.close();
        co_await peer.server->async_close(asio::use_awaitable);
    }, 30s);
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto box = open_box(ex, dir);
        auto second = co_await box.next_outcome(seen);
        REQUIRE(second.has_value());
        CHECK(second.value().control_id == "N2");
        auto third = co_await box.next_outcome(second.value().outcome);
        REQUIRE(third.has_value());
        CHECK(third.value().control_id == "N3");
        co_await box.close();
    }, 30s);
}

TEST_CASE("enqueuing the same message twice stores it once; the same MSH-10 with other bytes is refused")
{
    hl7::test::temp_dir dir;
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto box = open_box(ex, dir);
        const hl7::outbox_destination to{.host = "127.0.0.1", .port = 2575};
        hl7::message m1 = make_message("D1");
        auto first = co_await box.enqueue(to, std::move(m1));
        REQUIRE(first.has_value());
        CHECK_FALSE(first.value().duplicate);
        hl7::message m2 = make_message("D1");
        auto again = co_await box.enqueue(to, std::move(m2));
        REQUIRE(again.has_value());
        CHECK(again.value().duplicate);
        CHECK(again.value().id == first.value().id);
        hl7::message m3 = make_message("D1", "SOMEONE-ELSE");
        auto other = co_await box.enqueue(to, std::move(m3));
        CHECK(other.error() == outbox_errc::control_id_conflict);
        const hl7::outbox_destination bracketed{.host = "[::1]", .port = 2575};
        hl7::message m4 = make_message("D1");
        auto v6 = co_await box.enqueue(bracketed, std::move(m4));
        REQUIRE(v6.has_value());
        const hl7::outbox_destination v6_plain{.host = "::1", .port = 2575};
        const std::string d1 = "D1";
        auto [fec, found] = co_await box.async_find(v6_plain, d1, asio::as_tuple(asio::use_awaitable));
        CHECK(!fec);
        CHECK(found.id == v6.value().id);
        CHECK(found.destination == "[::1]:2575");
        const std::string nope = "NOPE";
        auto [mec, missing] = co_await box.async_find(to, nope, asio::as_tuple(asio::use_awaitable));
        CHECK(mec == outbox_errc::not_found);
        co_await box.close();
    }, 20s);
}

TEST_CASE("messages without MSH-10, with a bad partition key or lane count, or for a bad destination are refused unstored")
{
    hl7::test::temp_dir dir;
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto box = open_box(ex, dir);
        const hl7::outbox_destination to{.host = "127.0.0.1", .port = 2575};
        hl7::message without_id = hl7::message::parse("MSH|^~\\&|A|B|C|D|2024||ADT^A01||P|2.5.1\r").value();
        auto no_id = co_await box.enqueue(to, std::move(without_id));
        CHECK(no_id.error() == hl7::errc::missing_control_id);
        const hl7::enqueue_options bad_path{.partition_key = "PID..3", .lanes = 4};
        hl7::message m5 = make_message("E1");
        auto path = co_await box.enqueue(to, std::move(m5), bad_path);
        CHECK(path.error() == hl7::errc::invalid_path);
        const hl7::enqueue_options no_lanes{.lanes = 0};
        hl7::message m6 = make_message("E2");
        auto lanes = co_await box.enqueue(to, std::move(m6), no_lanes);
        CHECK(lanes.error() == outbox_errc::invalid_lanes);
        const hl7::outbox_destination bad_host{.host = "not a host", .port = 2575};
        hl7::message m7 = make_message("E3");
        auto host = co_await box.enqueue(bad_host, std::move(m7));
        CHECK(host.error() == hl7::errc::invalid_host);
        const hl7::outbox_destination no_port{.host = "127.0.0.1", .port = 0};
        hl7::message m8 = make_message("E4");
        auto port = co_await box.enqueue(no_port, std::move(m8));
        CHECK(port.error() == hl7::errc::invalid_port);
        const hl7::outbox_filter everything{};
        auto [lec, all] = co_await box.async_list(everything, asio::as_tuple(asio::use_awaitable));
        CHECK(!lec);
        CHECK(all.empty());
        co_await box.close();
    }, 20s);
}

TEST_CASE("a NACK is recorded rejected with the peer's text and the lane goes on")
{
    hl7::test::temp_dir dir;
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        recording_server peer(ex, [](const hl7::message& m) {
            return m.control_id() == "K2" ? hl7::verdict::reject : hl7::verdict::accept;
        });
        auto box = open_box(ex, dir);
        const hl7::outbox_destination to{.host = "127.0.0.1", .port = peer.port()};
        const hl7::enqueue_options one_lane{};
        const auto names = numbered("K", 3);
        const auto ids = co_await enqueue_all(box, to, names, one_lane);
        const auto options = quick();
        CHECK((co_await box.run(to, options)).has_value());
        CHECK(peer.received() == numbered("K", 3));
        const auto rejected = co_await get(box, ids[1]);
        CHECK(rejected.state == outbox_state::rejected);
        CHECK(rejected.code == hl7::ack_code::AR);
        CHECK(rejected.error == "refused by the test");
        CHECK((co_await get(box, ids[2])).state == outbox_state::acknowledged);
        const hl7::outbox_filter dead{.states = {outbox_state::rejected, outbox_state::failed}};
        auto [dec, letters] = co_await box.async_list(dead, asio::as_tuple(asio::use_awaitable));
        CHECK(!dec);
        REQUIRE(letters.size() == 1);
        CHECK(letters[0].id == ids[1]);
        co_await box.close();
        co_await peer.server->async_close(asio::use_awaitable);
    }, 30s);
}

TEST_CASE("a peer that never answers: the message is sent again flagged, becomes a dead letter at max_attempts, and a retry delivers it")
{
    hl7::test::temp_dir dir;
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        // The first two connections read and never answer; later ones answer.
        hl7::test::peer silent(ex, [](hl7::test::peer_link& l, std::size_t index) -> asio::awaitable<void> {
            if (index < 2) {
                while (co_await l.read_message()) {
                }
                co_return;
            }
            co_await l.serve();
        });
        auto box = open_box(ex, dir);
        const hl7::outbox_destination to{.host = "127.0.0.1", .port = silent.port()};
        const hl7::enqueue_options one_lane{};
        const std::vector<std::string> names{"S1", "S2"};
        const auto ids = co_await enqueue_all(box, to, names, one_lane);
        auto options = quick();
        options.connection.ack_timeout = 300ms; // the silent connections time out
        options.retry.max_attempts = 2;
        CHECK((co_await box.run(to, options)).has_value());
        const auto dead = co_await get(box, ids[0]);
        CHECK(dead.state == outbox_state::failed);
        CHECK(dead.attempts == 2);
        CHECK(dead.possible_duplicate); // the second sending followed one that may have arrived
        CHECK(dead.error == make_error_code(hl7::errc::ack_timeout).message() + " (gave up after 2 attempts)");
        CHECK((co_await get(box, ids[1])).state == outbox_state::acknowledged);
        auto [rec, n] = co_await box.async_retry_dead(asio::as_tuple(asio::use_awaitable));
        CHECK(!rec);
        CHECK(n == 1);
        CHECK((co_await box.run(to, options)).has_value());
        const auto retried = co_await get(box, ids[0]);
        CHECK(retried.state == outbox_state::acknowledged);
        CHECK(retried.attempts == 1);
        CHECK(retried.possible_duplicate); // flags stay: the peer may now have it twice or thrice
        CHECK(silent.received() == std::vector<std::string>{"S1", "S1", "S2", "S1"});
        co_await box.close();
        silent.stop();
    }, 30s);
}

TEST_CASE("a message the store shows written when delivery starts is sent again and flagged as a possible duplicate")
{
    hl7::test::temp_dir dir;
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        recording_server peer(ex);
        const hl7::outbox_destination to{.host = "127.0.0.1", .port = peer.port()};
        std::vector<std::int64_t> ids;
        {
            auto box = open_box(ex, dir);
            const hl7::enqueue_options one_lane{};
            const std::vector<std::string> names{"Z1", "Z2"};
            ids = co_await enqueue_all(box, to, names, one_lane);
            co_await box.close();
        }
        set_state(dir, ids[0], outbox_state::written); // as a crash between the write and the ACK leaves it
        auto box = open_box(ex, dir);
        const auto options = quick();
        CHECK((co_await box.run(to, options)).has_value());
        CHECK(peer.received() == std::vector<std::string>{"Z1", "Z2"});
        const auto resent = co_await get(box, ids[0]);
        CHECK(resent.state == outbox_state::acknowledged);
        CHECK(resent.possible_duplicate);
        CHECK(resent.attempts == 2);
        const auto normal = co_await get(box, ids[1]);
        CHECK_FALSE(normal.possible_duplicate);
        co_await box.close();
        co_await peer.server->async_close(asio::use_awaitable);
    }, 20s);
}

TEST_CASE("a partition key splits a destination into lanes, each over its own connection, each in order")
{
    hl7::test::temp_dir dir;
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        recording_server peer(ex);
        auto box = open_box(ex, dir);
        const hl7::outbox_destination to{.host = "127.0.0.1", .port = peer.port()};
        const hl7::enqueue_options lanes{.partition_key = "PID.3.1", .lanes = 4};
        std::map<std::string, std::vector<std::string>> by_patient;
        std::set<std::uint32_t> used;
        for (int i = 0; i < 40; ++i) {
            const std::string id = hl7::test::label("L", i);
            const std::string patient = hl7::test::label("PAT", i % 8);
            hl7::message m = make_message(id, patient);
            const auto lane = hl7::outbox_lane(m, lanes);
            REQUIRE(lane.has_value());
            auto r = co_await box.enqueue(to, std::move(m), lanes);
            REQUIRE(r.has_value());
            CHECK(r.value().lane == lane.value());
            used.insert(r.value().lane);
            by_patient[patient].push_back(id);
        }
        CHECK(used.size() > 1);
        const auto options = quick();
        CHECK((co_await box.run(to, options)).has_value());
        CHECK(peer.connections() == used.size());
        const auto received = peer.received();
        CHECK(received.size() == 40);
        for (const auto& [patient, expected] : by_patient) {
            std::vector<std::string> got;
            for (const std::string& id : received)
                if (std::find(expected.begin(), expected.end(), id) != expected.end())
                    got.push_back(id);
            CHECK(got == expected);
        }
        co_await box.close();
        co_await peer.server->async_close(asio::use_awaitable);
    }, 30s);
}

TEST_CASE("with a window of eight, a lane writes eight messages before the first ACK and records each ACK for its own message")
{
    hl7::test::temp_dir dir;
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        hl7::test::peer p(ex, hl7::test::answer_in_batches(8));
        auto box = open_box(ex, dir);
        const hl7::outbox_destination to{.host = "127.0.0.1", .port = p.port()};
        const auto names = numbered("WIN", 40);
        const hl7::enqueue_options one_lane{};
        const auto ids = co_await enqueue_all(box, to, names, one_lane);
        auto options = quick();
        options.connection.ack_timeout = 5s;
        options.connection.max_in_flight = 8;
        CHECK((co_await box.run(to, options)).has_value());
        CHECK(p.received() == names);
        CHECK(p.accepted() == 1);
        for (std::size_t i = 0; i < ids.size(); ++i) {
            const hl7::outbox_record r = co_await get(box, ids[i]);
            CHECK(r.state == outbox_state::acknowledged);
            CHECK(r.ack.find("MSA|AA|" + names[i] + "\r") != std::string::npos);
            CHECK(r.attempts == 1);
            CHECK_FALSE(r.possible_duplicate);
        }
        co_await box.close();
        p.stop();
    }, 30s);
}

TEST_CASE("a second outbox delivering from the same file fails with delivery_locked, and a second run of one destination with already_running")
{
    hl7::test::temp_dir dir;
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        // A lane starts only once its run holds the delivery lock: the queued message makes
        // each run's lane start, which tells the test the lock is held.
        int first_lanes = 0, second_lanes = 0;
        auto first = open_box(ex, dir, [&](const hl7::outbox_event& e) {
            if (e.what == hl7::outbox_event::kind::lane_started) // not `committing`, on the store's thread
                ++first_lanes;
        });
        auto second = open_box(ex, dir, [&](const hl7::outbox_event& e) {
            if (e.what == hl7::outbox_event::kind::lane_started)
                ++second_lanes;
        });
        const hl7::outbox_destination to{.host = "127.0.0.1", .port = hl7::test::closed_port(ex)};
        const hl7::enqueue_options one_lane{};
        const std::vector<std::string> names{"L1"};
        (void)co_await enqueue_all(first, to, names, one_lane);
        auto options = quick(false);
        asio::cancellation_signal stop;
        std::optional<error_code> first_done;
        first.async_run(to, options, asio::bind_cancellation_slot(stop.slot(), [&](error_code ec) { first_done = ec; }));
        co_await hl7::test::until([&] { return first_lanes > 0; }, "the first run's lane started");
        auto locked = co_await second.run(to, options);
        CHECK(locked.error() == outbox_errc::delivery_locked);
        auto twice = co_await first.run(to, options);
        CHECK(twice.error() == outbox_errc::already_running);
        CHECK_FALSE(first_done.has_value());
        stop.emit(asio::cancellation_type::terminal);
        while (!first_done)
            co_await sleep_for(5ms);
        CHECK(*first_done == asio::error::operation_aborted);
        // Now the second may deliver.
        asio::cancellation_signal stop2;
        std::optional<error_code> second_done;
        second.async_run(to, options, asio::bind_cancellation_slot(stop2.slot(), [&](error_code ec) { second_done = ec; }));
        co_await hl7::test::until([&] { return second_lanes > 0 || second_done.has_value(); },
                                  "the second run's lane started, or the run ended");
        CHECK_FALSE(second_done.has_value());
        stop2.emit(asio::cancellation_type::terminal);
        while (!second_done)
            co_await sleep_for(5ms);
        CHECK(*second_done == asio::error::operation_aborted);
        co_await first.close();
        co_await second.close();
    }, 20s);
}

TEST_CASE("a run cancelled while its destination refuses connections leaves the messages queued, unflagged and uncounted")
{
    hl7::test::temp_dir dir;
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        bool lane_started = false;
        auto box = open_box(ex, dir, [&](const hl7::outbox_event& e) {
            if (e.what == hl7::outbox_event::kind::lane_started) // not `committing`, on the store's thread
                lane_started = true;
        });
        const hl7::outbox_destination to{.host = "127.0.0.1", .port = hl7::test::closed_port(ex)};
        const hl7::enqueue_options one_lane{};
        const std::vector<std::string> names{"Q1", "Q2"};
        const auto ids = co_await enqueue_all(box, to, names, one_lane);
        auto options = quick(false);
        asio::cancellation_signal stop;
        std::optional<error_code> done;
        box.async_run(to, options, asio::bind_cancellation_slot(stop.slot(), [&](error_code ec) { done = ec; }));
        co_await hl7::test::until([&] { return lane_started; }, "the lane started");
        co_await sleep_for(200ms); // connection attempts refused meanwhile
        stop.emit(asio::cancellation_type::partial);
        while (!done)
            co_await sleep_for(5ms);
        CHECK(*done == asio::error::operation_aborted);
        for (std::int64_t id : ids) {
            const auto r = co_await get(box, id);
            CHECK(r.state == outbox_state::queued);
            CHECK_FALSE(r.possible_duplicate);
        }
        co_await box.close();
    }, 20s);
}

TEST_CASE("a run cancelled while a message is written waits for its ACK and records it")
{
    hl7::test::temp_dir dir;
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        hl7::test::peer slow(ex, [](hl7::test::peer_link& l, std::size_t) -> asio::awaitable<void> {
            co_await l.serve(300);
        });
        bool written = false;
        auto box = open_box(ex, dir, [&](const hl7::outbox_event& e) {
            if (e.what == hl7::outbox_event::kind::written)
                written = true;
        });
        const hl7::outbox_destination to{.host = "127.0.0.1", .port = slow.port()};
        const hl7::enqueue_options one_lane{};
        const std::vector<std::string> names{"A1", "A2"};
        const auto ids = co_await enqueue_all(box, to, names, one_lane);
        auto options = quick(false);
        options.connection.ack_timeout = 5s;
        asio::cancellation_signal stop;
        std::optional<error_code> done;
        box.async_run(to, options, asio::bind_cancellation_slot(stop.slot(), [&](error_code ec) { done = ec; }));
        while (!written)
            co_await sleep_for(2ms);
        stop.emit(asio::cancellation_type::terminal);
        while (!done)
            co_await sleep_for(5ms);
        CHECK(*done == asio::error::operation_aborted);
        CHECK((co_await get(box, ids[0])).state == outbox_state::acknowledged);
        const auto second = co_await get(box, ids[1]);
        CHECK(second.state == outbox_state::queued);
        CHECK(second.attempts == 0);
        CHECK(slow.received() == std::vector<std::string>{"A1"});
        co_await box.close();
        slow.stop();
    }, 20s);
}

TEST_CASE("next_outcome can be cancelled, and close completes a waiting one with closed")
{
    hl7::test::temp_dir dir;
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto box = open_box(ex, dir);
        asio::cancellation_signal cancel;
        std::optional<error_code> cancelled;
        box.async_next_outcome(0, asio::bind_cancellation_slot(cancel.slot(), [&](error_code ec, hl7::outbox_record) {
                                   cancelled = ec;
                               }));
        co_await sleep_for(120ms); // a few polls find nothing
        CHECK_FALSE(cancelled.has_value());
        cancel.emit(asio::cancellation_type::total);
        while (!cancelled)
            co_await sleep_for(2ms);
        CHECK(*cancelled == asio::error::operation_aborted);
        std::optional<error_code> closed;
        box.async_next_outcome(0, [&](error_code ec, hl7::outbox_record) { closed = ec; });
        co_await sleep_for(20ms);
        co_await box.close();
        while (!closed)
            co_await sleep_for(2ms);
        CHECK(*closed == outbox_errc::closed);
        const hl7::outbox_destination somewhere{.host = "127.0.0.1", .port = 1};
        hl7::message late = make_message("late");
        auto after = co_await box.enqueue(somewhere, std::move(late));
        CHECK(after.error() == outbox_errc::closed);
    }, 20s);
}

TEST_CASE("an observer that throws changes nothing delivered or stored")
{
    hl7::test::temp_dir dir;
    run_async([&]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        recording_server peer(ex);
        auto box = open_box(ex, dir, [](const hl7::outbox_event&) { throw std::runtime_error("observer"); });
        const hl7::outbox_destination to{.host = "127.0.0.1", .port = peer.port()};
        const hl7::enqueue_options one_lane{};
        const std::vector<std::string> names{"O1", "O2"};
        const auto ids = co_await enqueue_all(box, to, names, one_lane);
        const auto options = quick();
        CHECK((co_await box.run(to, options)).has_value());
        CHECK((co_await get(box, ids[1])).state == outbox_state::acknowledged);
        co_await box.close();
        co_await peer.server->async_close(asio::use_awaitable);
    }, 20s);
}

TEST_CASE("a PostgreSQL location is recognised, and a server that cannot be reached is store_unavailable")
{
    CHECK(hl7::parse_outbox_location("postgresql://db/outbox").what == hl7::outbox_location::kind::postgresql);
    CHECK(hl7::parse_outbox_location("postgres://u@db/outbox").what == hl7::outbox_location::kind::postgresql);
    CHECK(hl7::parse_outbox_location("/var/lib/outbox.db").what == hl7::outbox_location::kind::sqlite);
    CHECK(hl7::parse_outbox_location("postgresql.db").what == hl7::outbox_location::kind::sqlite);
    asio::io_context ctx;
    auto box = hl7::outbox::open(ctx.get_executor(), {.location = "postgresql:///outbox?host=/nonexistent/socket/dir"});
    REQUIRE(!box);
#ifdef HL7_OUTBOX_POSTGRESQL
    CHECK(box.error() == outbox_errc::store_unavailable);
#else
    CHECK(box.error() == outbox_errc::unsupported_location);
#endif
}
