// A window of messages in flight (connection_options::max_in_flight) against a delay line: a
// peer that answers each message D after it arrived, in order, while it goes on reading the
// next ones, as a receiver behind a slow link does. With D = 1 ms a window of W cannot do
// better than W / D messages per second; each benchmark reports its rate beside that bound
// (of_bound). With D = 0 (loopback), a window beside one message at a time shows what
// pipelining saves when the round trip is short.
#include <hl7/model/ack.hpp>
#include <hl7/model/mllp.hpp>
#include <hl7/net/client.hpp>

#include "support/util.hpp"

#include <benchmark/benchmark.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <chrono>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace asio = boost::asio;
using asio::ip::tcp;
using namespace std::chrono_literals;

namespace {

using steady = std::chrono::steady_clock;

// MSH-10 of a frame's payload: the tenth field of its first segment, found without a parse
// (the peer must cost little beside the client it measures).
std::string_view control_id_of(std::string_view payload)
{
    std::size_t pos = 0;
    for (int bars = 0; bars < 9; ++bars) {
        pos = payload.find('|', pos);
        if (pos == std::string_view::npos)
            return {};
        ++pos;
    }
    const std::size_t end = payload.find_first_of("|\r", pos);
    return payload.substr(pos, end == std::string_view::npos ? std::string_view::npos : end - pos);
}

std::string framed_ack(std::string_view control_id)
{
    std::string a;
    a.reserve(96);
    a.append("\x0bMSH|^~\\&|RECV|HOSP|SEND|HOSP|20240101000000||ACK|A");
    a.append(control_id);
    a.append("|P|2.5\rMSA|AA|");
    a.append(control_id);
    a.append("\r\x1c\r");
    return a;
}

// The delay line, on an io_context and thread of its own: one connection at a time; a reader
// that stamps each frame's arrival, and a writer that sends the ACKs that are due, in order,
// those due together in one write.
class delay_line {
public:
    explicit delay_line(steady::duration delay) : delay_(delay)
    {
        asio::co_spawn(ctx_, accept(), asio::detached);
        thread_ = std::thread([this] { ctx_.run(); });
    }
    delay_line(const delay_line&) = delete;
    delay_line& operator=(const delay_line&) = delete;
    ~delay_line()
    {
        ctx_.stop();
        thread_.join();
    }
    std::uint16_t port() const { return acceptor_.local_endpoint().port(); }

private:
    struct due {
        steady::time_point at;
        std::string ack;
    };
    struct link {
        explicit link(tcp::socket s) : socket(std::move(s)), wake(socket.get_executor()) {}
        tcp::socket socket;
        asio::steady_timer wake;
        std::deque<due> pending;
        bool closed = false;
    };

    asio::awaitable<void> accept()
    {
        for (;;) {
            auto [ec, s] = co_await acceptor_.async_accept(asio::as_tuple(asio::use_awaitable));
            if (ec)
                co_return;
            s.set_option(tcp::no_delay(true));
            auto l = std::make_shared<link>(std::move(s));
            asio::co_spawn(ctx_, read(l), asio::detached);
            asio::co_spawn(ctx_, write(l), asio::detached);
        }
    }

    asio::awaitable<void> read(std::shared_ptr<link> l)
    {
        hl7::mllp::decoder decoder;
        std::vector<char> buf(65536);
        for (;;) {
            auto [ec, n] = co_await l->socket.async_read_some(asio::buffer(buf), asio::as_tuple(asio::use_awaitable));
            if (ec)
                break;
            const steady::time_point now = steady::now();
            decoder.feed(std::string_view(buf.data(), n));
            bool added = false;
            std::string now_due; // without a delay, answered from here: no trip through the writer
            while (auto frame = decoder.next()) {
                if (!*frame)
                    break;
                if (delay_ == steady::duration::zero()) {
                    now_due += framed_ack(control_id_of(frame->value()));
                    continue;
                }
                l->pending.push_back({now + delay_, framed_ack(control_id_of(frame->value()))});
                added = true;
            }
            if (added)
                l->wake.cancel();
            if (!now_due.empty()) {
                auto [wec, written] = co_await asio::async_write(l->socket, asio::buffer(now_due),
                                                                 asio::as_tuple(asio::use_awaitable));
                if (wec)
                    break;
            }
        }
        l->closed = true;
        l->wake.cancel();
    }

    asio::awaitable<void> write(std::shared_ptr<link> l)
    {
        std::string out;
        while (!l->closed) {
            const steady::time_point now = steady::now();
            out.clear();
            while (!l->pending.empty() && l->pending.front().at <= now) {
                out += l->pending.front().ack;
                l->pending.pop_front();
            }
            if (!out.empty()) {
                auto [ec, n] = co_await asio::async_write(l->socket, asio::buffer(out), asio::as_tuple(asio::use_awaitable));
                if (ec)
                    break;
                continue;
            }
            l->wake.expires_at(l->pending.empty() ? steady::time_point::max() : l->pending.front().at);
            auto [ec] = co_await l->wake.async_wait(asio::as_tuple(asio::use_awaitable));
            (void)ec; // expired (an ACK is due) or cancelled (a frame came, or the link closed)
        }
    }

    steady::duration delay_;
    asio::io_context ctx_;
    tcp::acceptor acceptor_{ctx_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)};
    std::thread thread_;
};

// The round-trip benchmarks' sample with distinct MSH-10s, so that a window never holds two messages with the same one; more of them
// than any window.
const std::vector<hl7::message>& messages()
{
    static const std::vector<hl7::message> all = [] {
        std::vector<hl7::message> v;
        const hl7::message sample = hl7::message::parse(hl7::test::read_sample("adt_a01.hl7")).value();
        for (int i = 0; i < 4096; ++i) {
            hl7::message m = sample;
            const std::string id = hl7::test::label("W", i);
            if (!m.set("MSH.10", id))
                std::abort();
            v.push_back(std::move(m));
        }
        return v;
    }();
    return all;
}

// Sends `count` messages keeping up to `outstanding` handed to the connection at once, and
// runs until every one completed; false when any failed or was answered for another message.
bool send_all(asio::io_context& ctx, hl7::connection& conn, std::size_t count, std::size_t outstanding,
              std::size_t& next_message)
{
    std::size_t started = 0, finished = 0;
    bool wrong = false;
    std::function<void()> start_one = [&] {
        const hl7::message& m = messages()[next_message++ % messages().size()];
        std::string expected(m.control_id());
        ++started;
        conn.async_send(m, [&, expected = std::move(expected)](boost::system::error_code ec, hl7::ack a) {
            if (ec || a.control_id() != expected)
                wrong = true;
            if (++finished == count)
                ctx.stop();
            else if (started < count)
                start_one();
        });
    };
    for (std::size_t i = 0; i < outstanding && i < count; ++i)
        start_one();
    ctx.restart();
    ctx.run();
    return !wrong && finished == count;
}

void run_window(benchmark::State& state, steady::duration delay, std::size_t window, std::size_t per_iteration)
{
    delay_line peer(delay);
    asio::io_context ctx;
    auto client = hl7::client::create(ctx.get_executor(), {.host = "127.0.0.1"}).value();
    hl7::connection_options options;
    options.max_in_flight = window;
    auto conn = client.connect(peer.port(), options).value();
    std::size_t next = 0;
    // Warm up: the connection is made and the first exchanges are done before timing.
    if (!send_all(ctx, conn, window * 2, window + 1, next)) {
        state.SkipWithError("the warm-up failed");
        return;
    }
    bool wrong = false;
    for (auto _ : state)
        if (!send_all(ctx, conn, per_iteration, window + 1, next)) {
            wrong = true;
            break;
        }
    asio::co_spawn(ctx, conn.async_close(asio::use_awaitable), asio::detached);
    ctx.restart();
    ctx.run_for(2s);
    if (wrong) {
        state.SkipWithError("a send failed or was answered for another message");
        return;
    }
    const double messages = static_cast<double>(state.iterations()) * static_cast<double>(per_iteration);
    state.counters["messages/s"] = benchmark::Counter(messages, benchmark::Counter::kIsRate);
    if (delay > steady::duration::zero()) {
        const double bound = static_cast<double>(window) / std::chrono::duration<double>(delay).count();
        state.counters["bound/s"] = bound;
        state.counters["of_bound"] = benchmark::Counter(messages / bound, benchmark::Counter::kIsRate);
    }
}

void window_delay_1ms(benchmark::State& state)
{
    const auto w = static_cast<std::size_t>(state.range(0));
    run_window(state, 1ms, w, 64 * w);
}

void window_loopback(benchmark::State& state)
{
    run_window(state, steady::duration::zero(), static_cast<std::size_t>(state.range(0)), 4096);
}

} // namespace

BENCHMARK(window_delay_1ms)->Name("window/delay_1ms")->Arg(1)->Arg(8)->Arg(64)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(window_loopback)->Name("window/loopback")->Arg(1)->Arg(64)->UseRealTime()->Unit(benchmark::kMillisecond);
