// The client against in-process loopback peers, well-behaved and not. In every test each
// message ends acknowledged or with a named error, none silently lost, none written twice.
#include <hl7/model/ack.hpp>
#include <hl7/net/client.hpp>
#include <hl7/net/server.hpp>

#include "support/async_util.hpp"
#include "support/peer.hpp"
#include "support/process.hpp"
#include "support/checks.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_future.hpp>

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

using namespace std::chrono_literals;
namespace asio = boost::asio;
using hl7::errc;
using hl7::message;
using hl7::test::peer;
using hl7::test::peer_link;
using hl7::test::fresh;
using hl7::test::run_async;
using hl7::test::sleep_for;
using hl7::test::until;

namespace {

std::string control_id(const message& m)
{
    return std::string(m.get("MSH.10").value().raw());
}

// Options that make the tests fast: quick reconnects, no jitter. The timeouts are far above
// what a loaded machine needs for a loopback connect or an answer given at once, so that
// only a test that wants one to expire sets it shorter.
hl7::connection_options quick()
{
    hl7::connection_options o;
    o.connect_timeout = 5s;
    o.ack_timeout = 5s;
    o.reconnect = {.max_attempts = 10, .initial = 20ms, .max = 200ms, .factor = 2.0, .jitter = 0};
    return o;
}

hl7::client make_client(asio::any_io_executor ex, const char* host = "127.0.0.1")
{
    auto c = hl7::client::create(std::move(ex), {.host = host, .defaults = quick()});
    REQUIRE(c.has_value());
    return std::move(c).value();
}

// Waits for a use_future result without blocking the io_context's thread.
template <class T>
asio::awaitable<T> ready(std::future<T>& f)
{
    while (f.wait_for(0s) != std::future_status::ready)
        co_await sleep_for(2ms);
    co_return f.get();
}

// Runs `ctx` (whose io_context must keep work, as a listening peer does) until `done()` holds,
// then runs the handlers already due (such as the rethrow of a completion handler's exception
// that the connection posts after finishing), and returns how many exceptions left the
// io_context on the way. Gives up after 30 s, far beyond what any test needs, so that only a
// hang gets there and the test's check of done() fails.
template <class Done>
int run_until(asio::io_context& ctx, Done done)
{
    int escaped = 0;
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (!done() && std::chrono::steady_clock::now() < deadline) {
        try {
            ctx.run_for(5ms);
        } catch (const std::exception&) {
            ++escaped;
        }
    }
    for (;;) {
        try {
            if (ctx.poll() == 0)
                break;
        } catch (const std::exception&) {
            ++escaped;
        }
    }
    return escaped;
}

// A gate that a peer waits at until the test opens it: how a test holds the peer's answers
// until the client is in the state the test is about (one message in flight, the rest
// queued), whatever the machine's speed. For a single-threaded io_context.
class gate {
public:
    explicit gate(asio::any_io_executor ex) : timer_(std::move(ex), std::chrono::steady_clock::time_point::max()) {}

    asio::awaitable<void> wait()
    {
        while (!open_)
            co_await timer_.async_wait(asio::as_tuple(asio::use_awaitable));
    }

    void open()
    {
        open_ = true;
        timer_.cancel();
    }

private:
    asio::steady_timer timer_;
    bool open_ = false;
};

// A peer script that reads nothing until `g` opens, then answers every message with AA: what
// the client writes before that stays in flight, unanswered, and what it queues stays queued.
peer::script serve_after(std::shared_ptr<gate> g)
{
    return [g](peer_link& l, std::size_t) -> asio::awaitable<void> {
        co_await g->wait();
        co_await l.serve();
    };
}

// Events seen by an observer, recorded as owned copies.
struct recorder {
    struct entry {
        hl7::connection_event::kind what;
        std::uint32_t attempt;
        std::chrono::milliseconds delay;
        boost::system::error_code error;
        std::string control_id;
        std::string ack_code;
    };
    std::mutex mutex;
    std::vector<entry> events;

    std::function<void(const hl7::connection_event&)> observer()
    {
        return [this](const hl7::connection_event& e) {
            std::lock_guard lock(mutex);
            events.push_back({e.what, e.attempt, e.delay, e.error, std::string(e.control_id), std::string(to_string(e.code))});
        };
    }
    std::vector<entry> of(hl7::connection_event::kind k)
    {
        std::lock_guard lock(mutex);
        std::vector<entry> out;
        std::copy_if(events.begin(), events.end(), std::back_inserter(out), [k](const entry& e) { return e.what == k; });
        return out;
    }
};

// Completions of callback sends, counted per send: each must complete exactly once. Each
// send is registered before it starts, so one that never completes is seen.
struct tally {
    struct completion {
        boost::system::error_code error;
        std::string control_id; // of the ACK, on success
    };
    std::mutex mutex;
    std::map<int, std::vector<completion>> seen;

    std::function<void(boost::system::error_code, hl7::ack)> handler(int n)
    {
        {
            std::lock_guard lock(mutex);
            seen[n];
        }
        return [this, n](boost::system::error_code ec, hl7::ack ack) {
            std::lock_guard lock(mutex);
            seen[n].push_back({ec, std::string(ack.control_id())});
        };
    }
    std::size_t done()
    {
        std::lock_guard lock(mutex);
        return static_cast<std::size_t>(
            std::count_if(seen.begin(), seen.end(), [](const auto& s) { return !s.second.empty(); }));
    }
    completion of(int n)
    {
        std::lock_guard lock(mutex);
        REQUIRE_MESSAGE(seen[n].size() == 1, "send " << n << " completed " << seen[n].size() << " times");
        return seen[n].front();
    }
    void check_each_once()
    {
        std::lock_guard lock(mutex);
        for (const auto& s : seen)
            CHECK_MESSAGE(s.second.size() == 1, "send " << s.first << " completed " << s.second.size() << " times");
    }
    bool all_done()
    {
        std::lock_guard lock(mutex);
        return std::all_of(seen.begin(), seen.end(), [](const auto& s) { return !s.second.empty(); });
    }
    // Waits until every registered send completed, then checks that each did once. Gives up
    // after eight seconds, within run_async's default deadline and far beyond what any test
    // here waits on purpose, so that a send that never completes is named.
    asio::awaitable<void> settle()
    {
        const auto deadline = std::chrono::steady_clock::now() + 8s;
        while (!all_done() && std::chrono::steady_clock::now() < deadline)
            co_await sleep_for(1ms);
        check_each_once();
    }
};

// A message of about `size` bytes.
// A hook that throws on its first call and passes the text on unchanged after.
std::function<std::string(std::string_view)> throwing_once()
{
    return [calls = std::make_shared<int>(0)](std::string_view s) -> std::string {
        if ((*calls)++ == 0)
            throw std::runtime_error("hook");
        return std::string(s);
    };
}

message big_message(std::size_t size)
{
    message m = fresh();
    REQUIRE(m.set("NTE.3", std::string(size, 'x')));
    return m;
}

} // namespace

TEST_CASE("a message sent through the client gets its ACK from the library's server")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto server = hl7::server::create(ex, {.host = "127.0.0.1", .port = 0}).value();
        auto client = make_client(ex);
        auto adt = client.connect(server.local_endpoint().port()).value();
        message msg = fresh();
        const std::string id = control_id(msg);
        auto ack = co_await adt.send(std::move(msg));
        REQUIRE(ack.has_value());
        CHECK(ack.value().control_id() == id);
        CHECK(ack.value().code() == hl7::ack_code::CA); // the ADT sample asks for enhanced mode
        CHECK(ack.value().accepted());
        CHECK(adt.counters().sent == 1);
        CHECK(adt.counters().acknowledged == 1);
        CHECK(adt.state() == hl7::connection_state::connected);
        co_await adt.close();
        CHECK(adt.state() == hl7::connection_state::closed);
        co_await server.async_close(asio::use_awaitable);
    });
}

TEST_CASE("one client sends on two ports of the same host independently")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer adt_peer(ex, [](peer_link& l, std::size_t) { return l.serve(); });
        peer oru_peer(ex, [](peer_link& l, std::size_t) { return l.serve(); });
        auto client = make_client(ex);
        auto adt = client.connect(adt_peer.port()).value();
        auto oru = client.connect(oru_peer.port()).value();
        for (int i = 0; i < 3; ++i) {
            CHECK((co_await adt.send(fresh())).has_value());
            CHECK((co_await oru.send(fresh("oru_r01.hl7"))).has_value());
        }
        CHECK(adt_peer.received().size() == 3);
        CHECK(oru_peer.received().size() == 3);
        CHECK(client.counters().sent == 6);
        CHECK(client.counters().acknowledged == 6);
        co_await client.close();
        CHECK(adt.state() == hl7::connection_state::closed);
        CHECK(oru.state() == hl7::connection_state::closed);
    });
}

TEST_CASE("every completion token works: callback, deferred, use_awaitable and use_future")
{
    asio::io_context ctx;
    peer p(ctx.get_executor(), [](peer_link& l, std::size_t) { return l.serve(); });
    auto client = make_client(ctx.get_executor());
    auto conn = client.connect(p.port()).value();

    std::atomic<int> done{0};
    std::atomic<bool> callback_ok{false}, deferred_ok{false}, awaited_ok{false};
    conn.async_send(fresh(), [&](boost::system::error_code ec, hl7::ack ack) {
        callback_ok = !ec && ack.code() == hl7::ack_code::CA;
        ++done;
    });
    auto op = conn.async_send(fresh(), asio::deferred);
    std::move(op)([&](boost::system::error_code ec, hl7::ack ack) {
        deferred_ok = !ec && ack.code() == hl7::ack_code::CA;
        ++done;
    });
    std::future<hl7::ack> future = conn.async_send(fresh(), asio::use_future);
    asio::co_spawn(ctx, [&]() -> asio::awaitable<void> {
        hl7::ack ack = co_await conn.async_send(fresh(), asio::use_awaitable);
        auto via_default = co_await conn.async_send(fresh()); // the default token is deferred
        awaited_ok = ack.code() == hl7::ack_code::CA && via_default.code() == hl7::ack_code::CA;
        ++done;
    }, asio::detached);
    // The thread runs until every send completed: the deadline is far beyond what they need,
    // there only so that a send that never completes fails the test instead of hanging it.
    std::thread runner([&] { ctx.run(); });
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    const bool answered = future.wait_until(deadline) == std::future_status::ready;
    while (done < 3 && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(1ms);
    ctx.stop();
    runner.join();
    REQUIRE(answered);
    CHECK(future.get().code() == hl7::ack_code::CA);
    CHECK(done == 3);
    CHECK(callback_ok);
    CHECK(deferred_ok);
    CHECK(awaited_ok);
}

TEST_CASE("concurrent senders on a multi-threaded io_context are all answered, each once")
{
    run_async(
        []() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            peer p(ex, [](peer_link& l, std::size_t) { return l.serve(); });
            auto client = make_client(ex);
            auto conn = client.connect(p.port()).value();
            constexpr int senders = 8, each = 40;
            std::atomic<int> ok{0}, finished{0};
            std::mutex mutex;
            std::vector<std::string> sent;
            asio::steady_timer all_done(ex, std::chrono::steady_clock::time_point::max());
            for (int s = 0; s < senders; ++s) {
                asio::co_spawn(asio::make_strand(ex), [&]() -> asio::awaitable<void> {
                    for (int i = 0; i < each; ++i) {
                        message m = fresh();
                        {
                            std::lock_guard lock(mutex);
                            sent.push_back(control_id(m));
                        }
                        auto ack = co_await conn.send(std::move(m));
                        ok += ack.has_value() ? 1 : 0;
                    }
                    if (++finished == senders)
                        all_done.cancel();
                }, asio::detached);
            }
            co_await all_done.async_wait(asio::as_tuple(asio::use_awaitable));
            CHECK(ok == senders * each);
            CHECK(conn.counters().sent == senders * each);
            CHECK(conn.counters().acknowledged == senders * each);
            std::vector<std::string> got = p.received();
            CHECK(got.size() == std::size_t{senders * each});
            std::set<std::string> unique(got.begin(), got.end());
            CHECK(unique.size() == got.size());
            co_await conn.close();
        },
        20s, 4);
}

TEST_CASE("concurrent senders are served in the order they queued")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto g = std::make_shared<gate>(ex);
        peer p(ex, serve_after(g));
        auto client = make_client(ex);
        auto conn = client.connect(p.port()).value();
        std::vector<std::string> order;
        std::vector<std::future<hl7::ack>> futures;
        for (int i = 0; i < 10; ++i) {
            message m = fresh();
            order.push_back(control_id(m));
            futures.push_back(conn.async_send(std::move(m), asio::use_future));
        }
        // Nothing is answered until the first is in flight and the nine others wait behind it.
        co_await until([&] { return conn.counters().sent == 1 && conn.counters().queued == 9; },
                       "one message in flight and nine queued");
        g->open();
        for (std::size_t i = 0; i < futures.size(); ++i)
            CHECK((co_await ready(futures[i])).control_id() == order[i]);
        CHECK(p.received() == order);
        co_await conn.close();
    });
}

TEST_CASE("the peer closing mid-frame fails the message in flight and the next goes out after reconnecting")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t index) -> asio::awaitable<void> {
            if (index == 0) {
                auto m = co_await l.read_message();
                const std::string ack = peer_link::ack_bytes(*m);
                co_await l.write(std::string_view(ack).substr(0, ack.size() / 2));
                l.close();
                co_return;
            }
            co_await l.serve();
        });
        auto client = make_client(ex);
        auto conn = client.connect(p.port()).value();
        auto first = co_await conn.send(fresh());
        REQUIRE(first.has_error());
        CHECK(first.error() == errc::connection_lost);
        auto second = co_await conn.send(fresh());
        CHECK(second.has_value());
        CHECK(p.accepted() == 2);
        CHECK(p.received().size() == 2);
        co_await conn.close();
    });
}

TEST_CASE("a peer that never answers times the message out, and the connection recovers")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t index) -> asio::awaitable<void> {
            if (index == 0) {
                for (;;) { // read, never answer
                    auto m = co_await l.read_message();
                    if (!m)
                        co_return;
                }
            }
            co_await l.serve();
        });
        recorder events;
        auto client = make_client(ex);
        auto options = quick();
        // Short enough for a quick test, long enough that the second send, answered at once,
        // never meets it on a loaded machine.
        options.ack_timeout = 2s;
        options.observer = events.observer();
        auto conn = client.connect(p.port(), options).value();
        const auto started = std::chrono::steady_clock::now();
        auto first = co_await conn.send(fresh());
        const auto waited = std::chrono::steady_clock::now() - started;
        REQUIRE(first.has_error());
        CHECK(first.error() == errc::ack_timeout);
        CHECK(waited >= 2s);
        CHECK(events.of(hl7::connection_event::kind::timed_out).size() == 1);
        auto second = co_await conn.send(fresh());
        CHECK(second.has_value());
        CHECK(p.accepted() == 2);
        CHECK(conn.counters().timed_out == 1);
        co_await conn.close();
    });
}

TEST_CASE("an ACK that arrives after the timeout is never taken as the answer to the next message")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto first_id = std::make_shared<std::string>();
        peer p(ex, [first_id](peer_link& l, std::size_t index) -> asio::awaitable<void> {
            if (index == 0) {
                auto m = co_await l.read_message();
                *first_id = control_id(*m);
                co_await l.drain(); // never answers here: the client resets the link at the timeout
                co_return;
            }
            // On the new link the late ACK comes again, before the right one.
            auto m = co_await l.read_message();
            const std::string late = peer_link::ack_bytes_for(*first_id);
            co_await l.write(late);
            co_await l.reply(*m);
            co_await l.serve();
        });
        auto client = make_client(ex);
        auto options = quick();
        options.ack_timeout = 2s; // the second send, answered at once, never meets it
        auto conn = client.connect(p.port(), options).value();
        auto first = co_await conn.send(fresh());
        REQUIRE(first.has_error());
        CHECK(first.error() == errc::ack_timeout);
        message second = fresh();
        const std::string second_id = control_id(second);
        auto ack = co_await conn.send(std::move(second));
        REQUIRE(ack.has_value());
        CHECK(ack.value().control_id() == second_id);
        CHECK(conn.counters().discarded == 1);
        co_await conn.close();
    });
}

TEST_CASE("an ACK with the wrong MSA-2 is a mismatch and the link is reset")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t index) -> asio::awaitable<void> {
            if (index == 0) {
                co_await l.read_message();
                const std::string wrong = peer_link::ack_bytes_for("NOT-YOURS");
                co_await l.write(wrong);
                co_await l.drain(); // until the client drops the link
                co_return;
            }
            co_await l.serve();
        });
        auto client = make_client(ex);
        auto conn = client.connect(p.port()).value();
        auto first = co_await conn.send(fresh());
        REQUIRE(first.has_error());
        CHECK(first.error() == errc::ack_mismatch);
        CHECK((co_await conn.send(fresh())).has_value());
        CHECK(p.accepted() == 2);
        co_await conn.close();
    });
}

TEST_CASE("AE and AR acknowledgements are returned as such, with their verdict and texts")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) -> asio::awaitable<void> {
            auto a = co_await l.read_message();
            const std::string ae = peer_link::ack_bytes(*a, hl7::verdict::error, {.text = "no bed", .error_code = 206});
            co_await l.write(ae);
            auto b = co_await l.read_message();
            const std::string ar = peer_link::ack_bytes(*b, hl7::verdict::reject, {.error_text = "unknown patient"});
            co_await l.write(ar);
            co_await l.serve();
        });
        auto client = make_client(ex);
        auto conn = client.connect(p.port()).value();
        auto ae = co_await conn.send(fresh());
        REQUIRE(ae.has_value());
        CHECK(ae.value().code() == hl7::ack_code::CE);
        CHECK_FALSE(ae.value().accepted());
        CHECK(ae.value().error() == hl7::ack_errc::application_error);
        CHECK(ae.value().explanation() == "no bed; Application record locked");
        auto ar = co_await conn.send(fresh());
        REQUIRE(ar.has_value());
        CHECK(ar.value().code() == hl7::ack_code::CR);
        CHECK(ar.value().error() == hl7::ack_errc::application_reject);
        CHECK(ar.value().explanation() == "unknown patient");
        CHECK(conn.counters().rejected == 2);
        CHECK(conn.counters().acknowledged == 0);
        co_await conn.close();
    });
}

TEST_CASE("a refused connection backs off with growing delays and gives up after the maximum attempts")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        const auto port = hl7::test::closed_port(ex);
        recorder events;
        auto client = make_client(ex);
        auto options = quick();
        options.reconnect = {.max_attempts = 5, .initial = 10ms, .max = 1s, .factor = 2.0, .jitter = 0};
        options.observer = events.observer();
        auto conn = client.connect(port, options).value();
        auto result = co_await conn.send(fresh());
        REQUIRE(result.has_error());
        CHECK(result.error() == errc::not_connected);
        CHECK(conn.state() == hl7::connection_state::failed);
        auto scheduled = events.of(hl7::connection_event::kind::reconnect_scheduled);
        REQUIRE(scheduled.size() == 4);
        for (std::size_t i = 0; i < scheduled.size(); ++i) {
            CHECK(scheduled[i].delay == std::chrono::milliseconds(10 << i));
            CHECK(scheduled[i].error == asio::error::connection_refused);
        }
        auto gave_up = events.of(hl7::connection_event::kind::gave_up);
        REQUIRE(gave_up.size() == 1);
        CHECK(gave_up[0].attempt == 5);
        CHECK(events.of(hl7::connection_event::kind::connecting).size() == 5);
        // Later sends fail at once, until the application starts the connection again.
        auto later = co_await conn.send(fresh());
        CHECK(later.error() == errc::not_connected);
        peer p(ex, [](peer_link& l, std::size_t) { return l.serve(); }, "127.0.0.1", port);
        conn.start();
        CHECK((co_await conn.send(fresh())).has_value());
        co_await conn.close();
    });
}

TEST_CASE("messages queued while the peer restarts go out after reconnecting, in order")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto first = std::make_unique<peer>(ex, [](peer_link& l, std::size_t) { return l.serve(); });
        const auto port = first->port();
        auto client = make_client(ex);
        auto options = quick();
        options.reconnect.max_attempts = 0;
        auto conn = client.connect(port, options).value();
        CHECK((co_await conn.send(fresh())).has_value());
        first.reset(); // the peer goes down
        co_await until([&] { return conn.state() != hl7::connection_state::connected; }, "the link lost");
        std::vector<std::string> order;
        std::vector<std::future<hl7::ack>> futures;
        for (int i = 0; i < 5; ++i) {
            message m = fresh();
            order.push_back(control_id(m));
            futures.push_back(conn.async_send(std::move(m), asio::use_future));
        }
        // The messages wait while attempts to reconnect are refused, then the peer comes back.
        co_await until([&] { return conn.diagnostics().last_error == asio::error::connection_refused; },
                       "an attempt to reconnect refused");
        CHECK(conn.counters().queued == 5);
        peer second(ex, [](peer_link& l, std::size_t) { return l.serve(); }, "127.0.0.1", port);
        for (auto& f : futures)
            CHECK((co_await ready(f)).code() == hl7::ack_code::CA);
        CHECK(second.received() == order);
        CHECK(conn.counters().reconnects == 1);
        co_await conn.close();
    });
}

TEST_CASE("a peer that half-closes is noticed at once and the message in flight is not left waiting")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t index) -> asio::awaitable<void> {
            if (index == 0) {
                co_await l.read_message();
                boost::system::error_code ignored;
                l.socket.shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
                co_await l.drain();
                co_return;
            }
            co_await l.serve();
        });
        auto client = make_client(ex);
        auto options = quick();
        // Longer than the test's deadline: a send that waited for the ACK timeout instead of
        // noticing the half-close would fail the test, and with ack_timeout, not connection_lost.
        options.ack_timeout = 60s;
        auto conn = client.connect(p.port(), options).value();
        auto first = co_await conn.send(fresh());
        REQUIRE(first.has_error());
        CHECK(first.error() == errc::connection_lost);
        CHECK(conn.counters().timed_out == 0);
        CHECK((co_await conn.send(fresh())).has_value());
        co_await conn.close();
    });
}

TEST_CASE("a link the peer drops while idle is noticed and reopened before the next send")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t index) -> asio::awaitable<void> {
            if (index == 0) {
                l.close();
                co_return;
            }
            co_await l.serve();
        });
        recorder events;
        auto client = make_client(ex);
        auto options = quick();
        options.observer = events.observer();
        auto conn = client.connect(p.port(), options).value();
        co_await until([&] { return p.accepted() == 2; }, "the second connection");
        CHECK(events.of(hl7::connection_event::kind::disconnected).size() == 1);
        CHECK((co_await conn.send(fresh())).has_value());
        co_await conn.close();
    });
}

TEST_CASE("garbage bytes between frames are skipped")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) -> asio::awaitable<void> {
            while (auto m = co_await l.read_message()) {
                const std::string noisy = "\r\nnoise\x01\x02" + peer_link::ack_bytes(*m) + "\n\x7f";
                co_await l.write(noisy);
            }
        });
        auto client = make_client(ex);
        auto conn = client.connect(p.port()).value();
        for (int i = 0; i < 3; ++i)
            CHECK((co_await conn.send(fresh())).has_value());
        CHECK(conn.counters().discarded == 0);
        co_await conn.close();
    });
}

TEST_CASE("an oversized reply frame fails the message with frame_too_large")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t index) -> asio::awaitable<void> {
            if (index == 0) {
                co_await l.read_message();
                const std::string oversized = "\x0b" + std::string(4096, 'x') + "\x1c\r";
                co_await l.write(oversized);
                co_await l.drain();
                co_return;
            }
            co_await l.serve();
        });
        auto client = make_client(ex);
        auto options = quick();
        options.max_frame = 1024;
        auto conn = client.connect(p.port(), options).value();
        auto first = co_await conn.send(fresh());
        REQUIRE(first.has_error());
        CHECK(first.error() == errc::frame_too_large);
        CHECK((co_await conn.send(fresh())).has_value());
        co_await conn.close();
    });
}

TEST_CASE("a reply written one byte at a time is read whole")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) -> asio::awaitable<void> {
            while (auto m = co_await l.read_message()) {
                const std::string ack = peer_link::ack_bytes(*m);
                co_await l.write_bytewise(ack);
            }
        });
        auto client = make_client(ex);
        auto conn = client.connect(p.port()).value();
        for (int i = 0; i < 2; ++i)
            CHECK((co_await conn.send(fresh())).has_value());
        co_await conn.close();
    });
}

TEST_CASE("the right reply and a stray one in one write: the next message still gets its own ACK")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) -> asio::awaitable<void> {
            auto m = co_await l.read_message();
            const std::string both = peer_link::ack_bytes(*m) + peer_link::ack_bytes_for("STRAY");
            co_await l.write(both);
            co_await l.serve();
        });
        auto client = make_client(ex);
        auto conn = client.connect(p.port()).value();
        CHECK((co_await conn.send(fresh())).has_value());
        // The stray, read with the right reply, comes while nothing is in flight: it is dropped
        // then, not kept for the next message.
        co_await until([&] { return conn.counters().discarded == 1; }, "the stray reply discarded");
        message second = fresh();
        const std::string id = control_id(second);
        auto ack = co_await conn.send(std::move(second));
        REQUIRE(ack.has_value());
        CHECK(ack.value().control_id() == id);
        CHECK(conn.counters().discarded == 1);
        CHECK(p.accepted() == 1);
        co_await conn.close();
    });
}

TEST_CASE("a reply that is not an ACK is a garbled ACK")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t index) -> asio::awaitable<void> {
            if (index == 0) {
                co_await l.read_message();
                const std::string garbled = hl7::mllp::encode("this is not HL7");
                co_await l.write(garbled);
                co_await l.drain();
                co_return;
            }
            co_await l.serve();
        });
        auto client = make_client(ex);
        auto conn = client.connect(p.port()).value();
        auto first = co_await conn.send(fresh());
        REQUIRE(first.has_error());
        CHECK(first.error() == errc::invalid_ack);
        CHECK((co_await conn.send(fresh())).has_value());
        co_await conn.close();
    });
}

TEST_CASE("a DNS name that does not resolve is a named error and counts as a failed attempt")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        recorder events;
        auto client = make_client(ex, "does-not-exist.invalid");
        auto options = quick();
        options.connect_timeout = 5s;
        options.reconnect.max_attempts = 2;
        options.observer = events.observer();
        auto conn = client.connect(2575, options).value();
        auto result = co_await conn.send(fresh());
        REQUIRE(result.has_error());
        CHECK(result.error() == errc::not_connected);
        auto gave_up = events.of(hl7::connection_event::kind::gave_up);
        REQUIRE(gave_up.size() == 1);
        CHECK(gave_up[0].error == errc::resolve_failed);
        CHECK(gave_up[0].attempt == 2);
    }, 15s);
}

TEST_CASE("a DNS name that resolves to the loopback works")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) { return l.serve(); });
        auto client = make_client(ex, "localhost");
        CHECK(client.host().kind == hl7::host_kind::name);
        auto conn = client.connect(p.port()).value();
        CHECK((co_await conn.send(fresh())).has_value());
        co_await conn.close();
    });
}

TEST_CASE("the IPv6 loopback works" * doctest::skip(!hl7::test::has_ipv6_loopback()))
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto p = std::make_unique<peer>(ex, [](peer_link& l, std::size_t) { return l.serve(); }, "::1");
        auto client = make_client(ex, "[::1]");
        CHECK(client.host().kind == hl7::host_kind::ipv6);
        auto conn = client.connect(p->port()).value();
        CHECK((co_await conn.send(fresh())).has_value());
        co_await conn.close();
    });
}

TEST_CASE("bad hosts and ports are named errors before any I/O")
{
    asio::io_context ctx;
    for (const char* host : {"", "999.1.1.1", "bad_host", "[hl7.example.org]", "2001:db8:::1"}) {
        auto c = hl7::client::create(ctx.get_executor(), {.host = host});
        REQUIRE(c.has_error());
        CHECK(c.error() == errc::invalid_host);
    }
    auto client = make_client(ctx.get_executor());
    for (int port : {0, -1, 65536, 100000}) {
        auto conn = client.connect(port);
        REQUIRE(conn.has_error());
        CHECK(conn.error() == errc::invalid_port);
    }
    CHECK(ctx.poll() == 0);
}

TEST_CASE("close fails queued messages, lets the one in flight get its ACK, and never reconnects")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto g = std::make_shared<gate>(ex);
        peer p(ex, serve_after(g));
        auto client = make_client(ex);
        auto conn = client.connect(p.port()).value();
        auto in_flight = conn.async_send(fresh(), asio::use_future);
        auto queued = conn.async_send(fresh(), asio::use_future);
        co_await until([&] { return conn.counters().sent == 1; }, "the first message written, the second queued");
        bool closed = false;
        conn.async_close([&] { closed = true; });
        co_await until([&] { return queued.wait_for(0s) == std::future_status::ready; }, "the queued send failed");
        CHECK(conn.state() == hl7::connection_state::closing); // still waiting for the ACK
        CHECK(in_flight.wait_for(0s) == std::future_status::timeout);
        g->open();
        co_await until([&] { return closed; }, "the close complete");
        CHECK(conn.state() == hl7::connection_state::closed);
        CHECK((co_await ready(in_flight)).code() == hl7::ack_code::CA);
        try {
            queued.get();
            FAIL("the queued send succeeded");
        } catch (const boost::system::system_error& e) {
            CHECK(e.code() == errc::closed);
        }
        auto after = co_await conn.send(fresh());
        CHECK(after.error() == errc::closed);
        co_await conn.close(); // idempotent
        co_await sleep_for(100ms); // time for a reconnection that must not come
        CHECK(p.accepted() == 1);
        CHECK(p.received().size() == 1);
    });
}

TEST_CASE("a queued message can be cancelled and is never sent")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto g = std::make_shared<gate>(ex);
        peer p(ex, serve_after(g));
        auto client = make_client(ex);
        auto conn = client.connect(p.port()).value();
        auto first = conn.async_send(fresh(), asio::use_future);
        asio::cancellation_signal signal;
        boost::system::error_code cancelled_ec;
        bool done = false;
        message victim = fresh();
        const std::string victim_id = control_id(victim);
        conn.async_send(std::move(victim), asio::bind_cancellation_slot(signal.slot(), [&](boost::system::error_code ec, hl7::ack) {
                            cancelled_ec = ec;
                            done = true;
                        }));
        co_await until([&] { return conn.counters().sent == 1; }, "the first message in flight, the victim queued");
        signal.emit(asio::cancellation_type::total);
        co_await until([&] { return done; }, "the cancelled send complete");
        g->open();
        CHECK(cancelled_ec == asio::error::operation_aborted);
        CHECK((co_await ready(first)).code() == hl7::ack_code::CA);
        CHECK((co_await conn.send(fresh())).has_value());
        CHECK(std::find(p.received().begin(), p.received().end(), victim_id) == p.received().end());
        CHECK(p.received().size() == 2);
        co_await conn.close();
    });
}

TEST_CASE("a full queue refuses messages with queue_full, and queued messages time out while disconnected")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto client = make_client(ex);
        auto options = quick();
        options.queue_limit = 2;
        options.queue_timeout = 200ms;
        options.reconnect.max_attempts = 0;
        auto conn = client.connect(hl7::test::closed_port(ex), options).value();
        auto a = conn.async_send(fresh(), asio::use_future);
        auto b = conn.async_send(fresh(), asio::use_future);
        auto c = co_await conn.send(fresh());
        REQUIRE(c.has_error());
        CHECK(c.error() == errc::queue_full);
        for (auto* f : {&a, &b}) {
            try {
                co_await ready(*f);
                FAIL("expected queue_timeout");
            } catch (const boost::system::system_error& e) {
                CHECK(e.code() == errc::queue_timeout);
            }
        }
        co_await conn.close();
    });
}

TEST_CASE("a lazy connection connects only when the first message is sent")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) { return l.serve(); });
        auto client = make_client(ex);
        auto options = quick();
        options.lazy = true;
        auto conn = client.connect(p.port(), options).value();
        co_await sleep_for(50ms);
        CHECK(p.accepted() == 0);
        CHECK(conn.state() == hl7::connection_state::idle);
        CHECK((co_await conn.send(fresh())).has_value());
        CHECK(p.accepted() == 1);
        co_await conn.close();
    });
}

TEST_CASE("a message without MSH-10 is refused unsent")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) { return l.serve(); });
        auto client = make_client(ex);
        auto conn = client.connect(p.port()).value();
        auto r = co_await conn.send(message::parse(std::string_view("MSH|^~\\&|A|B\rPID|1\r")).value());
        REQUIRE(r.has_error());
        CHECK(r.error() == errc::missing_control_id);
        CHECK(conn.counters().sent == 0);
        co_await conn.close();
    });
}

TEST_CASE("a send that fails at once never completes inside the call that started it")
{
    // Started from a handler of the io_context (not of the connection's strand) and from one
    // on the strand: in neither may the callback run before async_send returns.
    asio::io_context ctx;
    peer p(ctx.get_executor(), [](peer_link& l, std::size_t) { return l.serve(); });
    auto client = make_client(ctx.get_executor());
    auto conn = client.connect(p.port()).value();
    const message unnamed = message::parse(std::string_view("MSH|^~\\&|A|B\rPID|1\r")).value();
    int completed = 0;
    bool inside = false;
    auto start = [&] {
        inside = true;
        conn.async_send(unnamed, [&](boost::system::error_code ec, const hl7::ack&) {
            CHECK_FALSE(inside);
            CHECK(ec == errc::missing_control_id);
            ++completed;
        });
        inside = false;
    };
    asio::post(ctx, start);
    asio::post(conn.get_executor(), start);
    CHECK(run_until(ctx, [&] { return completed == 2; }) == 0);
    CHECK(completed == 2);
}

TEST_CASE("send and receive hooks transform what goes on the wire")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto flip = [](std::string_view s) {
            std::string out(s);
            std::reverse(out.begin(), out.end());
            return out;
        };
        peer p(ex, [flip](peer_link& l, std::size_t) -> asio::awaitable<void> {
            while (auto frame = co_await l.read_frame()) {
                auto m = message::parse(flip(*frame));
                REQUIRE(m.has_value());
                const std::string flipped = hl7::mllp::encode(flip(hl7::make_ack(m.value(), hl7::verdict::accept).value().str()));
                co_await l.write(flipped);
            }
        });
        auto client = make_client(ex);
        auto options = quick();
        options.send_hook = flip;
        options.receive_hook = flip;
        auto conn = client.connect(p.port(), options).value();
        auto ack = co_await conn.send(fresh());
        REQUIRE(ack.has_value());
        CHECK(ack.value().code() == hl7::ack_code::CA);
        co_await conn.close();
    });
}

TEST_CASE("the observer sees a connection's life and each message's round trip")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) { return l.serve(); });
        recorder events;
        auto client = make_client(ex);
        auto options = quick();
        options.observer = events.observer();
        auto conn = client.connect(p.port(), options).value();
        message m = fresh();
        const std::string id = control_id(m);
        CHECK((co_await conn.send(std::move(m))).has_value());
        co_await conn.close();
        std::vector<hl7::connection_event::kind> kinds;
        for (const auto& e : events.events)
            kinds.push_back(e.what);
        using k = hl7::connection_event::kind;
        CHECK(kinds == std::vector<k>{k::connecting, k::connected, k::sent, k::acknowledged, k::closed});
        auto acked = events.of(k::acknowledged);
        REQUIRE(acked.size() == 1);
        CHECK(acked[0].control_id == id);
        CHECK(acked[0].ack_code == "CA");
    });
}

TEST_CASE("destroying a connection handle closes the connection")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto closed = std::make_shared<bool>(false);
        peer p(ex, [closed](peer_link& l, std::size_t) -> asio::awaitable<void> {
            co_await l.serve();
            *closed = true;
        });
        auto client = make_client(ex);
        {
            auto conn = client.connect(p.port()).value();
            CHECK((co_await conn.send(fresh())).has_value());
        }
        co_await until([&] { return *closed; }, "the peer seeing the connection closed");
        CHECK(client.counters().sent == 1);
        CHECK(client.counters().acknowledged == 1);
    });
}

TEST_CASE("closing with one message in flight and several queued completes every send once")
{
    for (int queued : {1, 2, 5, 50}) {
        CAPTURE(queued);
        run_async([queued]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            auto g = std::make_shared<gate>(ex);
            peer p(ex, serve_after(g));
            auto client = make_client(ex);
            auto conn = client.connect(p.port()).value();
            tally t;
            for (int i = 0; i <= queued; ++i)
                conn.async_send(fresh(), t.handler(i));
            co_await until([&] { return conn.counters().sent == 1; }, "the first message in flight, the rest queued");
            bool closed = false;
            conn.async_close([&] { closed = true; });
            co_await until([&] { return t.done() == static_cast<std::size_t>(queued); }, "the queued sends failed");
            g->open(); // now the one in flight gets its ACK
            co_await until([&] { return closed; }, "the close complete");
            co_await t.settle();
            CHECK_FALSE(t.of(0).error);
            for (int i = 1; i <= queued; ++i)
                CHECK(t.of(i).error == errc::closed);
        });
    }
}

TEST_CASE("an ACK that arrives before the message is fully written never counts as success")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        // The peer answers AA after the first 64 KiB of the message and reads no more.
        peer p(ex, [](peer_link& l, std::size_t) -> asio::awaitable<void> {
            std::string head;
            while (head.size() < 65536) {
                auto [ec, n] = co_await l.socket.async_read_some(asio::buffer(l.buffer), asio::as_tuple(asio::use_awaitable));
                if (ec)
                    co_return;
                head.append(l.buffer.data(), n);
            }
            auto m = message::parse(std::string_view(head).substr(1, head.find('\r', 1)));
            const std::string id(m.value().control_id());
            const std::string ack = peer_link::ack_bytes_for(id);
            co_await l.write(ack);
            co_await sleep_for(60s); // holds the link open, unread, until the test ends
        });
        auto client = make_client(ex);
        auto options = quick();
        options.ack_timeout = 2s; // time enough for the peer to answer before it expires
        options.max_message = std::size_t{64} << 20;
        auto conn = client.connect(p.port(), options).value();
        message m = big_message(std::size_t{40} << 20); // more than the socket buffers hold
        auto r = co_await conn.send(std::move(m));
        REQUIRE(r.has_error());
        CHECK(r.error() == errc::ack_timeout);
        CHECK(conn.counters().acknowledged == 0);
        co_await conn.close();
    }, 20s);
}

TEST_CASE("a child process started while a connection is up does not hold it open once closed")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto ended = std::make_shared<bool>(false);
        peer p(ex, [ended](peer_link& l, std::size_t) -> asio::awaitable<void> {
            co_await l.serve();
            *ended = true; // the client's end of the connection reached the peer
        });
        auto client = make_client(ex);
        auto conn = client.connect(p.port(), quick()).value();
        CHECK((co_await conn.send(fresh())).has_value());
        hl7::test::child sleeper({"/bin/sh", "-c", "echo running; exec sleep 60"}); // inherits every descriptor not close-on-exec
        // Past its exec: until then the child holds a copy of every descriptor, close-on-exec or not
        // (posix_spawn returns before the kernel closes them).
        REQUIRE(sleeper.read_line(5s) == "running");
        co_await conn.close();
        co_await until([&] { return *ended; }, "the peer seeing the connection closed");
    }, 20s);
}

TEST_CASE("a throwing observer is contained and every send still completes")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) { return l.serve(); });
        auto client = make_client(ex);
        auto options = quick();
        options.observer = [](const hl7::connection_event&) { throw std::runtime_error("observer"); };
        auto conn = client.connect(p.port(), options).value();
        for (int i = 0; i < 3; ++i)
            CHECK((co_await conn.send(fresh())).has_value());
        co_await conn.close();
    });
}

TEST_CASE("a throwing send hook fails that send with hook_failed, unsent")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) { return l.serve(); });
        auto client = make_client(ex);
        auto options = quick();
        options.send_hook = throwing_once();
        auto conn = client.connect(p.port(), options).value();
        auto first = co_await conn.send(fresh());
        REQUIRE(first.has_error());
        CHECK(first.error() == errc::hook_failed);
        CHECK((co_await conn.send(fresh())).has_value());
        CHECK(p.received().size() == 1);
        co_await conn.close();
    });
}

TEST_CASE("a throwing receive hook fails the message in flight with hook_failed and resets the link")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) { return l.serve(); });
        auto client = make_client(ex);
        auto options = quick();
        options.receive_hook = throwing_once();
        auto conn = client.connect(p.port(), options).value();
        auto first = co_await conn.send(fresh());
        REQUIRE(first.has_error());
        CHECK(first.error() == errc::hook_failed);
        CHECK((co_await conn.send(fresh())).has_value());
        CHECK(p.accepted() == 2);
        co_await conn.close();
    });
}

TEST_CASE("a completion handler that throws leaves no other send without its completion")
{
    // Completion handlers are dispatched inline from the connection's strand, on the strand
    // itself (no executor of their own) or on the io_context's executor: one that throws must
    // not skip those after it, and its exception still leaves io_context::run().
    for (bool own_executor : {false, true}) {
        CAPTURE(own_executor);
        asio::io_context ctx;
        auto g = std::make_shared<gate>(ctx.get_executor());
        peer p(ctx.get_executor(), serve_after(g));
        auto client = make_client(ctx.get_executor());
        auto conn = client.connect(p.port()).value();
        std::map<int, int> completed;
        auto throwing = [&completed](int i) {
            return [&completed, i](boost::system::error_code, const hl7::ack&) {
                ++completed[i];
                throw std::runtime_error("handler");
            };
        };
        for (int i = 0; i < 4; ++i) {
            if (own_executor)
                conn.async_send(fresh(), asio::bind_executor(ctx.get_executor(), throwing(i)));
            else
                conn.async_send(fresh(), throwing(i));
        }
        // One in flight, three queued: close fails the queued ones in one go, then the one in
        // flight gets its ACK.
        CHECK(run_until(ctx, [&] { return conn.counters().sent == 1; }) == 0);
        bool closed = false;
        conn.async_close([&] { closed = true; });
        int escaped = run_until(ctx, [&] { return completed.size() == 3; });
        CHECK(completed == std::map<int, int>{{1, 1}, {2, 1}, {3, 1}});
        g->open();
        escaped += run_until(ctx, [&] { return closed; });
        CHECK(closed);
        CHECK(completed == std::map<int, int>{{0, 1}, {1, 1}, {2, 1}, {3, 1}});
        CHECK(escaped >= 2); // at least the first of each batch: the queued ones, the one in flight
        CHECK(conn.state() == hl7::connection_state::closed);
        // Nothing was left half done: another connection on the same io_context works.
        bool ok = false;
        auto again = client.connect(p.port()).value();
        again.async_send(fresh(), [&](boost::system::error_code ec, const hl7::ack&) { ok = !ec; });
        escaped += run_until(ctx, [&] { return ok; });
        CHECK(ok);
    }
}

TEST_CASE("cancelling the first, a middle or the last queued send completes it alone and the rest keep their order")
{
    for (int victim : {1, 3, 5}) {
        CAPTURE(victim);
        run_async([victim]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            auto g = std::make_shared<gate>(ex);
            peer p(ex, serve_after(g));
            auto client = make_client(ex);
            auto conn = client.connect(p.port()).value();
            tally t;
            std::vector<asio::cancellation_signal> signals(6);
            std::vector<std::string> ids;
            for (int i = 0; i <= 5; ++i) {
                message m = fresh();
                ids.push_back(control_id(m));
                conn.async_send(std::move(m), asio::bind_cancellation_slot(signals[static_cast<std::size_t>(i)].slot(), t.handler(i)));
            }
            co_await until([&] { return conn.counters().sent == 1; }, "0 in flight, 1 to 5 queued");
            signals[static_cast<std::size_t>(victim)].emit(asio::cancellation_type::total);
            co_await until([&] { return t.done() == 1; }, "the cancelled send complete");
            g->open();
            co_await t.settle();
            CHECK(t.of(victim).error == asio::error::operation_aborted);
            std::vector<std::string> expected;
            for (int i = 0; i <= 5; ++i) {
                if (i == victim)
                    continue;
                CHECK(t.of(i).control_id == ids[static_cast<std::size_t>(i)]);
                expected.push_back(ids[static_cast<std::size_t>(i)]);
            }
            CHECK(p.received() == expected);
            co_await conn.close();
        });
    }
}

TEST_CASE("queued sends that time out behind a slow peer complete alone, each once")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto g = std::make_shared<gate>(ex);
        peer p(ex, serve_after(g));
        auto client = make_client(ex);
        auto options = quick();
        options.queue_timeout = 200ms;
        auto conn = client.connect(p.port(), options).value();
        // Connected first, so that the first message is written at once and never waits in the
        // queue long enough to time out itself.
        co_await until([&] { return conn.state() == hl7::connection_state::connected; }, "the connection up");
        tally t;
        conn.async_send(fresh(), t.handler(0));
        co_await until([&] { return conn.counters().sent == 1; }, "the first message in flight");
        for (int i = 1; i <= 4; ++i)
            conn.async_send(fresh(), t.handler(i));
        // The peer answers nothing until the four queued behind the first timed out.
        co_await until([&] { return t.done() == 4; }, "the queued sends timed out");
        g->open();
        co_await t.settle();
        CHECK_FALSE(t.of(0).error);
        for (int i = 1; i <= 4; ++i)
            CHECK(t.of(i).error == errc::queue_timeout);
        CHECK(p.received().size() == 1);
        CHECK(conn.counters().failed == 4);
        co_await conn.close();
    });
}

TEST_CASE("destroying a connection handle with many sends pending completes every one of them once")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto g = std::make_shared<gate>(ex);
        peer p(ex, serve_after(g));
        auto client = make_client(ex);
        tally t;
        {
            auto conn = client.connect(p.port()).value();
            for (int i = 0; i <= 50; ++i)
                conn.async_send(fresh(), t.handler(i));
            co_await until([&] { return conn.counters().sent == 1; }, "the first message in flight, the rest queued");
        }
        co_await until([&] { return t.done() == 50; }, "the queued sends failed");
        g->open();
        co_await t.settle();
        CHECK_FALSE(t.of(0).error); // in flight: a graceful close lets it finish
        for (int i = 1; i <= 50; ++i)
            CHECK(t.of(i).error == errc::closed);
    });
}

TEST_CASE("closing the client with sends pending on several connections completes every one of them once")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto g = std::make_shared<gate>(ex);
        peer p(ex, serve_after(g));
        auto client = make_client(ex);
        auto a = client.connect(p.port()).value();
        auto b = client.connect(p.port()).value();
        tally t;
        for (int i = 0; i < 20; ++i)
            (i % 2 ? a : b).async_send(fresh(), t.handler(i));
        co_await until([&] { return a.counters().sent == 1 && b.counters().sent == 1; },
                       "one message in flight on each connection, the rest queued");
        bool closed = false;
        client.async_close([&] { closed = true; });
        co_await until([&] { return t.done() == 18; }, "the queued sends failed");
        g->open(); // now the two in flight get their ACKs
        co_await until([&] { return closed; }, "the client closed");
        co_await t.settle();
        CHECK(a.state() == hl7::connection_state::closed);
        CHECK(b.state() == hl7::connection_state::closed);
        CHECK(client.counters().acknowledged == 2);
        CHECK(client.counters().failed == 18);
    });
}

TEST_CASE("a payload holding an MLLP block byte is refused unsent, from parsed text or a send hook")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) { return l.serve(); });
        auto client = make_client(ex);
        auto conn = client.connect(p.port()).value();
        const std::string text = "MSH|^~\\&|A|B|C|D|20240101||ADT^A01|BLOCK1|P|2.5.1\rPID|1||x\x0by\r";
        auto parsed = message::parse(text);
        REQUIRE(parsed.has_value());
        auto r = co_await conn.send(std::move(parsed).value());
        REQUIRE(r.has_error());
        CHECK(r.error() == errc::block_byte_in_message);

        auto options = quick();
        options.send_hook = [](std::string_view s) { return std::string(s) + "\x1c"; };
        auto hooked = client.connect(p.port(), options).value();
        auto h = co_await hooked.send(fresh());
        REQUIRE(h.has_error());
        CHECK(h.error() == errc::block_byte_in_message);
        CHECK(conn.counters().sent == 0);
        CHECK(conn.counters().failed == 1);
        CHECK(hooked.counters().sent == 0);
        CHECK((co_await conn.send(fresh())).has_value());
        CHECK(p.received().size() == 1);
        co_await client.close();
    });
}

TEST_CASE("a message larger than max_message, after the send hook, is refused unsent")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) { return l.serve(); });
        auto client = make_client(ex);
        auto options = quick();
        options.max_message = 4096;
        auto conn = client.connect(p.port(), options).value();
        auto r = co_await conn.send(big_message(5000));
        REQUIRE(r.has_error());
        CHECK(r.error() == errc::message_too_large);
        CHECK_FALSE(hl7::in_doubt(r.error()));
        options.send_hook = [](std::string_view s) { return std::string(s) + std::string(5000, 'x'); };
        auto hooked = client.connect(p.port(), options).value();
        auto h = co_await hooked.send(fresh());
        REQUIRE(h.has_error());
        CHECK(h.error() == errc::message_too_large);
        CHECK((co_await conn.send(fresh())).has_value());
        CHECK(p.received().size() == 1);
        co_await client.close();
    });
}

TEST_CASE("an ACK that arrives before the end of the write, then the peer closing, fails the send as connection_lost")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) -> asio::awaitable<void> {
            std::string head;
            while (head.size() < 65536) {
                auto [ec, n] = co_await l.socket.async_read_some(asio::buffer(l.buffer), asio::as_tuple(asio::use_awaitable));
                if (ec)
                    co_return;
                head.append(l.buffer.data(), n);
            }
            auto m = message::parse(std::string_view(head).substr(1, head.find('\r', 1)));
            const std::string ack = peer_link::ack_bytes_for(m.value().control_id());
            co_await l.write(ack);
            co_await sleep_for(100ms);
            l.close();
        });
        auto client = make_client(ex);
        auto options = quick();
        options.ack_timeout = 5s;
        options.max_message = std::size_t{64} << 20;
        auto conn = client.connect(p.port(), options).value();
        auto r = co_await conn.send(big_message(std::size_t{40} << 20));
        REQUIRE(r.has_error());
        CHECK(r.error() == errc::connection_lost);
        CHECK(conn.counters().acknowledged == 0);
        co_await conn.close();
    }, 20s);
}

TEST_CASE("an immediate close fails the message in flight as connection_lost without waiting for its ACK")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) { return l.drain(); }); // never answers
        auto client = make_client(ex);
        auto options = quick();
        options.ack_timeout = 60s; // longer than the test's deadline: a close that waited would fail it
        auto conn = client.connect(p.port(), options).value();
        tally t;
        conn.async_send(fresh(), t.handler(0));
        conn.async_send(fresh(), t.handler(1));
        co_await until([&] { return conn.counters().sent == 1; }, "the first message in flight");
        co_await conn.close(hl7::close_mode::immediate);
        CHECK(conn.state() == hl7::connection_state::closed);
        co_await t.settle();
        CHECK(t.of(0).error == errc::connection_lost);
        CHECK(hl7::in_doubt(t.of(0).error));
        CHECK(t.of(1).error == errc::closed);
        auto after = co_await conn.send(fresh());
        CHECK(after.error() == errc::closed);
    });
}

TEST_CASE("a graceful close does not wait for a message abandoned by terminal cancellation")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) { return l.drain(); }); // never answers
        auto client = make_client(ex);
        auto options = quick();
        options.ack_timeout = 60s;
        auto conn = client.connect(p.port(), options).value();
        tally t;
        asio::cancellation_signal signal;
        conn.async_send(fresh(), asio::bind_cancellation_slot(signal.slot(), t.handler(0)));
        co_await until([&] { return conn.counters().sent == 1; }, "the first message in flight");
        signal.emit(asio::cancellation_type::terminal);
        co_await t.settle();
        CHECK(t.of(0).error == asio::error::operation_aborted);
        co_await conn.close();
        CHECK(conn.state() == hl7::connection_state::closed);
        CHECK(conn.counters().failed == 1);
        CHECK(conn.counters().timed_out == 0);
    });
}

TEST_CASE("the diagnostics say why a connection gave up and after how many attempts")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto client = make_client(ex);
        auto options = quick();
        options.reconnect.max_attempts = 3;
        auto conn = client.connect(hl7::test::closed_port(ex), options).value();
        CHECK_FALSE(conn.diagnostics().last_error);
        const auto before = std::chrono::steady_clock::now();
        auto r = co_await conn.send(fresh());
        REQUIRE(r.has_error());
        CHECK(r.error() == errc::not_connected);
        const auto d = conn.diagnostics();
        CHECK(d.last_error == asio::error::connection_refused);
        CHECK(d.failed_attempts == 3);
        CHECK(d.at >= before);
        CHECK(d.at <= std::chrono::steady_clock::now());
        co_await conn.close();
    });
}

TEST_CASE("remote_endpoint names the peer while connected and nothing otherwise")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        peer p(ex, [](peer_link& l, std::size_t) { return l.serve(); });
        auto client = make_client(ex);
        auto options = quick();
        options.lazy = true;
        auto conn = client.connect(p.port(), options).value();
        CHECK_FALSE(conn.remote_endpoint().has_value());
        CHECK((co_await conn.send(fresh())).has_value());
        const auto remote = conn.remote_endpoint();
        REQUIRE(remote.has_value());
        CHECK(*remote == asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), p.port()));
        co_await conn.close();
        CHECK_FALSE(conn.remote_endpoint().has_value());
    });
}

TEST_CASE("after the peer closes an idle link cleanly the connection reconnects at once, without a backoff")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        auto idle_timeout = std::make_shared<gate>(ex);
        peer p(ex, [idle_timeout](peer_link& l, std::size_t index) -> asio::awaitable<void> {
            if (index == 0) {
                co_await idle_timeout->wait();
                l.close();
                co_return;
            }
            co_await l.serve();
        });
        recorder events;
        auto client = make_client(ex);
        auto options = quick();
        options.reconnect.initial = 100ms;
        options.observer = events.observer();
        auto conn = client.connect(p.port(), options).value();
        // The link must have been up for at least `initial` when the peer closes it: counted
        // from when the client sees it up, whatever the machine's speed.
        co_await until([&] { return conn.state() == hl7::connection_state::connected; }, "the connection up");
        co_await sleep_for(300ms);
        idle_timeout->open();
        co_await until([&] { return p.accepted() == 2; }, "the second connection");
        auto lost = events.of(hl7::connection_event::kind::disconnected);
        REQUIRE(lost.size() == 1);
        CHECK(lost[0].error == asio::error::eof);
        auto scheduled = events.of(hl7::connection_event::kind::reconnect_scheduled);
        REQUIRE(scheduled.size() == 1);
        CHECK(scheduled[0].delay == 0ms);
        CHECK((co_await conn.send(fresh())).has_value());
        co_await conn.close();
    });
}

TEST_CASE("connection states and event kinds have names")
{
    CHECK(hl7::to_string(hl7::connection_state::backing_off) == "backing_off");
    CHECK(hl7::to_string(hl7::connection_state::closed) == "closed");
    CHECK(hl7::to_string(hl7::connection_event::kind::reconnect_scheduled) == "reconnect_scheduled");
    CHECK(hl7::to_string(hl7::connection_event::kind::gave_up) == "gave_up");
}

// ---------------------------------------------------------------------------------------
// The window (max_in_flight > 1) against the faults of the matrix above.

namespace {

enum class fault { none, out_of_order, mid_frame_close, silence, late_ack, wrong_id, negative, garbage, bytewise, two_in_one };

const char* name(fault f)
{
    const char* names[] = {"none", "out_of_order", "mid_frame_close", "silence", "late_ack",
                           "wrong_id", "negative", "garbage", "bytewise", "two_in_one"};
    return names[static_cast<int>(f)];
}

// On its first connection the peer reads three messages (a window's worth) before doing what
// `f` says; on later ones it serves normally.
peer::script window_peer(fault f)
{
    return [f](peer_link& l, std::size_t index) -> asio::awaitable<void> {
        if (index > 0) {
            co_await l.serve();
            co_return;
        }
        std::vector<message> got;
        for (int i = 0; i < 3; ++i) {
            auto m = co_await l.read_message();
            if (!m)
                co_return;
            got.push_back(std::move(*m));
        }
        const std::string a1 = peer_link::ack_bytes(got[0]);
        const std::string a2 = peer_link::ack_bytes(got[1]);
        const std::string a3 = peer_link::ack_bytes(got[2]);
        switch (f) {
        case fault::none: {
            const std::string all = a1 + a2 + a3;
            co_await l.write(all);
            break;
        }
        case fault::out_of_order: {
            const std::string all = a3 + a1 + a2;
            co_await l.write(all);
            break;
        }
        case fault::mid_frame_close: {
            const std::string half = a1.substr(0, a1.size() / 2);
            co_await l.write(half);
            l.close();
            co_return;
        }
        case fault::silence: co_await l.drain(); co_return;
        case fault::late_ack: {
            const std::string all = a1 + a2 + a3 + a1;
            co_await l.write(all);
            break;
        }
        case fault::wrong_id: {
            const std::string wrong = peer_link::ack_bytes_for("NOT-OURS");
            co_await l.write(wrong);
            co_await l.drain();
            co_return;
        }
        case fault::negative: {
            const std::string all = peer_link::ack_bytes(got[0], hl7::verdict::error) +
                                    peer_link::ack_bytes(got[1], hl7::verdict::reject) + a3;
            co_await l.write(all);
            break;
        }
        case fault::garbage: {
            const std::string garbled = hl7::mllp::encode("this is not HL7");
            co_await l.write(garbled);
            co_await l.drain();
            co_return;
        }
        case fault::bytewise: {
            const std::string all = a2 + a3 + a1;
            co_await l.write_bytewise(all);
            break;
        }
        case fault::two_in_one: {
            const std::string two = a2 + a1;
            co_await l.write(two);
            co_await l.write(a3);
            break;
        }
        }
        co_await l.serve();
    };
}

} // namespace

TEST_CASE("with a window of three, every fault of the matrix completes each send once with its own outcome")
{
    for (const fault f : {fault::none, fault::out_of_order, fault::mid_frame_close, fault::silence, fault::late_ack,
                          fault::wrong_id, fault::negative, fault::garbage, fault::bytewise, fault::two_in_one}) {
        CAPTURE(name(f));
        run_async([f]() -> asio::awaitable<void> {
            auto ex = co_await asio::this_coro::executor;
            peer p(ex, window_peer(f));
            auto client = make_client(ex);
            auto options = quick();
            options.max_in_flight = 3;
            // Only the silent peer should meet the ACK timeout; short for it, and long enough
            // that the sends after the reconnect, answered at once, never meet it.
            if (f == fault::silence)
                options.ack_timeout = 2s;
            auto conn = client.connect(p.port(), options).value();
            tally t;
            std::vector<std::string> ids;
            for (int i = 0; i < 6; ++i) {
                message m = fresh();
                ids.push_back(control_id(m));
                conn.async_send(std::move(m), t.handler(i));
            }
            co_await t.settle();
            auto ok = [&](int i) {
                const auto c = t.of(i);
                CHECK_FALSE(c.error);
                CHECK(c.control_id == ids[static_cast<std::size_t>(i)]);
            };
            auto in_doubt = [&](int i, boost::system::error_code expected) {
                CHECK(t.of(i).error == expected);
                CHECK(hl7::in_doubt(t.of(i).error));
            };
            for (int i = 3; i < 6; ++i) // beyond the first window: after a reconnect, if any
                ok(i);
            switch (f) {
            case fault::none:
            case fault::out_of_order:
            case fault::late_ack:
            case fault::negative:
            case fault::bytewise:
            case fault::two_in_one:
                for (int i = 0; i < 3; ++i)
                    CHECK(t.of(i).control_id == ids[static_cast<std::size_t>(i)]);
                CHECK(p.accepted() == 1);
                break;
            case fault::mid_frame_close:
                for (int i = 0; i < 3; ++i)
                    in_doubt(i, errc::connection_lost);
                break;
            case fault::silence:
                in_doubt(0, errc::ack_timeout);
                for (int i = 1; i < 3; ++i) {
                    const auto ec = t.of(i).error;
                    CHECK((ec == errc::ack_timeout || ec == errc::connection_lost));
                    CHECK(hl7::in_doubt(ec));
                }
                break;
            case fault::wrong_id:
                in_doubt(0, errc::ack_mismatch);
                in_doubt(1, errc::connection_lost);
                in_doubt(2, errc::connection_lost);
                break;
            case fault::garbage:
                in_doubt(0, errc::invalid_ack);
                in_doubt(1, errc::connection_lost);
                in_doubt(2, errc::connection_lost);
                break;
            }
            if (f == fault::negative) {
                CHECK(conn.counters().rejected == 2);
                CHECK(conn.counters().acknowledged == 4);
            } else if (f == fault::late_ack) {
                CHECK(conn.counters().discarded == 1);
            }
            const auto c = conn.counters();
            CHECK(c.acknowledged + c.rejected + c.timed_out + c.failed == 6);
            co_await conn.close();
        });
    }
}

TEST_CASE("with a window, messages are written before the first ACK and the peer sees them in order")
{
    run_async([]() -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        // Reads eight messages before answering any: with a window of eight, nothing waits.
        peer p(ex, hl7::test::answer_in_batches(8));
        auto client = make_client(ex);
        auto options = quick();
        options.max_in_flight = 8;
        auto conn = client.connect(p.port(), options).value();
        tally t;
        std::vector<std::string> ids;
        for (int i = 0; i < 8; ++i) {
            message m = fresh();
            ids.push_back(control_id(m));
            conn.async_send(std::move(m), t.handler(i));
        }
        co_await t.settle();
        for (int i = 0; i < 8; ++i)
            CHECK(t.of(i).control_id == ids[static_cast<std::size_t>(i)]);
        CHECK(p.received() == ids);
        co_await conn.close();
    });
}
