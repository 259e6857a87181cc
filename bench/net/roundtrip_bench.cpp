// Round trips over loopback: the library's client against the library's server (in another
// thread), beside plain blocking sockets doing the same exchange with the same bytes, in the
// same placement (client in the benchmark's thread, server in another).
#include <hl7/model/ack.hpp>
#include <hl7/net/client.hpp>
#include <hl7/net/server.hpp>

#include "support/tls_certs.hpp"
#include "support/util.hpp"

#include <benchmark/benchmark.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <algorithm>
#include <barrier>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <csignal>
#include <malloc.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>
#include <vector>

namespace asio = boost::asio;
using asio::ip::tcp;
using namespace std::chrono_literals;

namespace {

const hl7::message& sample()
{
    static const hl7::message m = hl7::message::parse(hl7::test::read_sample("adt_a01.hl7")).value();
    return m;
}

// What the raw peer answers: an ACK of the sample, framed, of the same shape as the one the
// library's server generates.
const std::string& raw_ack()
{
    static const std::string a = hl7::mllp::encode(hl7::make_ack(sample(), hl7::verdict::accept).value().str());
    return a;
}

// Certificates for the TLS variant, made once per run and removed at exit.
const hl7::test::certificates& certs()
{
    return hl7::test::shared_certificates();
}

hl7::server_options server_options(bool tls)
{
    hl7::server_options o{.host = "127.0.0.1", .port = 0};
    if (tls)
        o.tls = hl7::tls_server_options{.certificate_file = certs().server_cert, .private_key_file = certs().server_key};
    return o;
}

// The library's server on its own io_context and thread.
struct library_server {
    explicit library_server(bool tls = false) : server(hl7::server::create(ctx.get_executor(), server_options(tls)).value()) {}

    asio::io_context ctx;
    hl7::server server;
    std::thread thread{[this] { ctx.run(); }};

    std::uint16_t port() const { return server.local_endpoint().port(); }
    ~library_server()
    {
        asio::co_spawn(ctx, server.async_close(asio::use_awaitable), asio::detached);
        ctx.stop();
        thread.join();
    }
};

// Takes the first whole MLLP frame out of `pending`, its payload into `frame`; false when
// there is none yet.
bool take_frame(std::string& pending, std::string& frame)
{
    const auto start = pending.find('\x0b');
    const auto end = pending.find('\x1c', start == std::string::npos ? 0 : start);
    if (start == std::string::npos || end == std::string::npos)
        return false;
    frame.assign(pending, start + 1, end - start - 1);
    pending.erase(0, std::min(pending.size(), end + 2));
    return true;
}

// Reads one MLLP frame with blocking calls; false on EOF.
bool read_frame(tcp::socket& s, std::string& pending, std::string& frame)
{
    char buf[8192];
    for (;;) {
        if (take_frame(pending, frame))
            return true;
        boost::system::error_code ec;
        const std::size_t n = s.read_some(asio::buffer(buf), ec);
        if (ec)
            return false;
        pending.append(buf, n);
    }
}

// A blocking peer that answers every frame with the precomputed ACK; one thread per connection.
struct raw_server {
    asio::io_context ctx;
    tcp::acceptor acceptor{ctx, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)};
    std::vector<std::thread> threads;

    explicit raw_server(int connections)
    {
        for (int i = 0; i < connections; ++i)
            threads.emplace_back([this] {
                tcp::socket s = acceptor.accept();
                s.set_option(tcp::no_delay(true));
                std::string pending, frame;
                while (read_frame(s, pending, frame))
                    asio::write(s, asio::buffer(raw_ack()));
            });
    }
    std::uint16_t port() const { return acceptor.local_endpoint().port(); }
    ~raw_server()
    {
        for (auto& t : threads)
            t.join();
    }
};

// A blocking client socket connected to the raw server.
tcp::socket raw_client(asio::io_context& ctx, std::uint16_t port)
{
    tcp::socket s(ctx);
    s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    s.set_option(tcp::no_delay(true));
    return s;
}

// Runs `body` on `ctx` until it finishes; open connections would keep run() going forever.
template <class Body>
void run_until_done(asio::io_context& ctx, Body body)
{
    asio::co_spawn(ctx, std::move(body), [&ctx](std::exception_ptr) { ctx.stop(); });
    ctx.restart();
    ctx.run();
}

// What any Asio-based client and server pay before doing any HL7 work: the same exchange with
// bare Asio coroutines on strands (async_write of the frame, async_read_some until its end,
// the precomputed ACK), each side on an io_context of its own as with the library. Against
// raw_baseline it shows what the reactor costs; against the library, what the library adds.
asio::awaitable<bool> asio_exchange(tcp::socket& s, std::string& pending, const std::string& frame, std::string& reply)
{
    char buf[4096];
    co_await asio::async_write(s, asio::buffer(frame), asio::as_tuple(asio::use_awaitable));
    for (;;) {
        if (take_frame(pending, reply))
            co_return true;
        auto [ec, n] = co_await s.async_read_some(asio::buffer(buf), asio::as_tuple(asio::use_awaitable));
        if (ec)
            co_return false;
        pending.append(buf, n);
    }
}

struct asio_server {
    asio::io_context ctx;
    tcp::acceptor acceptor{ctx, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0)};
    std::thread thread;

    asio_server()
    {
        asio::co_spawn(ctx, accept(), asio::detached);
        thread = std::thread([this] { ctx.run(); });
    }
    ~asio_server()
    {
        ctx.stop();
        thread.join();
    }
    std::uint16_t port() const { return acceptor.local_endpoint().port(); }

    asio::awaitable<void> accept()
    {
        for (;;) {
            auto [ec, s] = co_await acceptor.async_accept(asio::make_strand(ctx), asio::as_tuple(asio::use_awaitable));
            if (ec)
                co_return;
            auto ex = s.get_executor();
            asio::co_spawn(ex, serve(std::move(s)), asio::detached);
        }
    }
    static asio::awaitable<void> serve(tcp::socket s)
    {
        s.set_option(tcp::no_delay(true));
        std::string pending, frame;
        char buf[16384];
        for (;;) {
            auto [ec, n] = co_await s.async_read_some(asio::buffer(buf), asio::as_tuple(asio::use_awaitable));
            if (ec)
                co_return;
            pending.append(buf, n);
            while (take_frame(pending, frame))
                co_await asio::async_write(s, asio::buffer(raw_ack()), asio::as_tuple(asio::use_awaitable));
        }
    }
};

tcp::socket asio_client(asio::io_context& ctx, std::uint16_t port)
{
    tcp::socket s(asio::make_strand(ctx));
    s.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    s.set_option(tcp::no_delay(true));
    return s;
}

// The library's server in a child process, so that memory measured here is the client's.
struct forked_server {
    pid_t pid = -1;
    std::uint16_t port = 0;

    forked_server()
    {
        int fds[2];
        if (pipe(fds) != 0)
            return;
        pid = fork();
        if (pid == 0) {
            close(fds[0]);
            asio::io_context ctx;
            // A thousand connections from one source: past the defaults meant for untrusted peers.
            auto server = hl7::server::create(ctx.get_executor(), {.host = "127.0.0.1",
                                                                   .port = 0,
                                                                   .max_connections = 0,
                                                                   .max_per_source = 0})
                              .value();
            const std::uint16_t p = server.local_endpoint().port();
            if (write(fds[1], &p, sizeof p) != sizeof p)
                _exit(1);
            ctx.run();
            _exit(0);
        }
        close(fds[1]);
        if (read(fds[0], &port, sizeof port) != sizeof port)
            port = 0;
        close(fds[0]);
    }
    ~forked_server()
    {
        if (pid > 0) {
            kill(pid, SIGKILL);
            waitpid(pid, nullptr, 0);
        }
    }
};

// Messages per second: `per_iteration` messages in each benchmark iteration.
void report_rate(benchmark::State& state, double per_iteration = 1)
{
    state.counters["messages/s"] =
        benchmark::Counter(static_cast<double>(state.iterations()) * per_iteration, benchmark::Counter::kIsRate);
}

// The round-trip times of a single-connection benchmark.
struct latencies {
    std::vector<double> us;

    latencies() { us.reserve(1 << 20); }
    void since(std::chrono::steady_clock::time_point t0)
    {
        us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
    }
    // messages/s, p50 and p99.
    void report(benchmark::State& state)
    {
        report_rate(state);
        if (us.empty())
            return;
        std::sort(us.begin(), us.end());
        state.counters["p50_us"] = us[us.size() / 2];
        state.counters["p99_us"] = us[us.size() * 99 / 100];
    }
};

void roundtrip_sequential(benchmark::State& state, bool tls)
{
    library_server server(tls);
    asio::io_context ctx;
    auto client = hl7::client::create(ctx.get_executor(), {.host = "127.0.0.1"}).value();
    hl7::connection_options options;
    if (tls)
        options.tls = hl7::tls_client_options{.ca_file = certs().ca};
    auto conn = client.connect(server.port(), options).value();
    latencies times;
    bool wrong = false;
    run_until_done(ctx, [&]() -> asio::awaitable<void> {
        for (auto _ : state) {
            const auto t0 = std::chrono::steady_clock::now();
            auto ack = co_await conn.send(sample());
            times.since(t0);
            if (!ack || !(ack.value().control_id() == "MSG00001")) {
                wrong = true;
                break;
            }
        }
        co_await conn.close();
    });
    if (wrong)
        state.SkipWithError("a round trip failed or was answered wrongly");
    times.report(state);
}

void roundtrip_raw_baseline(benchmark::State& state)
{
    raw_server server(1);
    asio::io_context ctx;
    tcp::socket s = raw_client(ctx, server.port());
    const std::string frame = hl7::mllp::encode(sample().str());
    std::string pending, reply;
    latencies times;
    for (auto _ : state) {
        const auto t0 = std::chrono::steady_clock::now();
        asio::write(s, asio::buffer(frame));
        if (!read_frame(s, pending, reply) || reply.size() + 3 != raw_ack().size()) {
            state.SkipWithError("a raw round trip failed");
            break;
        }
        times.since(t0);
    }
    s.close();
    times.report(state);
}

void roundtrip_asio_baseline(benchmark::State& state)
{
    asio_server server;
    asio::io_context ctx;
    tcp::socket s = asio_client(ctx, server.port());
    const std::string frame = hl7::mllp::encode(sample().str());
    latencies times;
    bool wrong = false;
    run_until_done(ctx, [&]() -> asio::awaitable<void> {
        std::string pending, reply;
        for (auto _ : state) {
            const auto t0 = std::chrono::steady_clock::now();
            if (!co_await asio_exchange(s, pending, frame, reply) || reply.size() + 3 != raw_ack().size()) {
                wrong = true;
                break;
            }
            times.since(t0);
        }
    });
    s.close();
    if (wrong)
        state.SkipWithError("an Asio round trip failed");
    times.report(state);
}

// The two halves of roundtrip/sequential, each against the raw baseline's other half: where
// the time goes.
void roundtrip_client_only(benchmark::State& state)
{
    raw_server server(1);
    asio::io_context ctx;
    auto client = hl7::client::create(ctx.get_executor(), {.host = "127.0.0.1"}).value();
    auto conn = client.connect(server.port()).value();
    bool wrong = false;
    run_until_done(ctx, [&]() -> asio::awaitable<void> {
        for (auto _ : state) {
            if (!(co_await conn.send(sample()))) {
                wrong = true;
                break;
            }
        }
        co_await conn.close();
    });
    if (wrong)
        state.SkipWithError("a round trip failed");
    report_rate(state);
}

void roundtrip_server_only(benchmark::State& state)
{
    library_server server;
    asio::io_context ctx;
    tcp::socket s = raw_client(ctx, server.port());
    const std::string frame = hl7::mllp::encode(sample().str());
    std::string pending, reply;
    for (auto _ : state) {
        asio::write(s, asio::buffer(frame));
        if (!read_frame(s, pending, reply) || reply.find("MSA|CA|MSG00001") == std::string::npos) {
            state.SkipWithError("a round trip failed or was answered wrongly");
            break;
        }
    }
    s.close();
    report_rate(state);
}

constexpr int parallel = 8;
constexpr int per_round = 256; // messages per connection in one benchmark iteration

void roundtrip_connections_8(benchmark::State& state)
{
    library_server server;
    asio::io_context ctx;
    auto client = hl7::client::create(ctx.get_executor(), {.host = "127.0.0.1"}).value();
    std::vector<hl7::connection> conns;
    for (int i = 0; i < parallel; ++i)
        conns.push_back(client.connect(server.port()).value());
    bool wrong = false;
    for (auto _ : state) {
        int running = parallel;
        for (auto& c : conns)
            asio::co_spawn(ctx, [&c, &wrong]() -> asio::awaitable<void> {
                for (int i = 0; i < per_round; ++i)
                    if (!(co_await c.send(sample())))
                        wrong = true;
            }, [&](std::exception_ptr) {
                if (--running == 0)
                    ctx.stop();
            });
        ctx.restart();
        ctx.run();
    }
    if (wrong)
        state.SkipWithError("a round trip failed");
    report_rate(state, parallel * per_round);
    run_until_done(ctx, client.close());
}

void roundtrip_connections_8_raw_baseline(benchmark::State& state)
{
    raw_server server(parallel);
    asio::io_context ctx;
    std::vector<tcp::socket> sockets;
    for (int i = 0; i < parallel; ++i)
        sockets.push_back(raw_client(ctx, server.port()));
    const std::string frame = hl7::mllp::encode(sample().str());
    std::barrier start(parallel + 1), done(parallel + 1);
    std::atomic<bool> stop{false}, wrong{false};
    std::vector<std::thread> clients;
    for (auto& s : sockets)
        clients.emplace_back([&, sock = &s] {
            std::string pending, reply;
            for (;;) {
                start.arrive_and_wait();
                if (stop)
                    return;
                for (int i = 0; i < per_round; ++i) {
                    asio::write(*sock, asio::buffer(frame));
                    if (!read_frame(*sock, pending, reply))
                        wrong = true;
                }
                done.arrive_and_wait();
            }
        });
    for (auto _ : state) {
        start.arrive_and_wait();
        done.arrive_and_wait();
    }
    stop = true;
    start.arrive_and_wait();
    for (auto& t : clients)
        t.join();
    for (auto& s : sockets)
        s.close();
    if (wrong)
        state.SkipWithError("a raw round trip failed");
    report_rate(state, parallel * per_round);
}

void roundtrip_connections_8_asio_baseline(benchmark::State& state)
{
    asio_server server;
    asio::io_context ctx;
    std::vector<tcp::socket> sockets;
    for (int i = 0; i < parallel; ++i)
        sockets.push_back(asio_client(ctx, server.port()));
    const std::string frame = hl7::mllp::encode(sample().str());
    std::vector<std::string> pending(parallel), replies(parallel);
    bool wrong = false;
    for (auto _ : state) {
        int running = parallel;
        for (int c = 0; c < parallel; ++c)
            asio::co_spawn(sockets[c].get_executor(), [&, c]() -> asio::awaitable<void> {
                for (int i = 0; i < per_round; ++i)
                    if (!co_await asio_exchange(sockets[c], pending[c], frame, replies[c]))
                        wrong = true;
            }, [&](std::exception_ptr) {
                if (--running == 0)
                    ctx.stop();
            });
        ctx.restart();
        ctx.run();
    }
    for (auto& s : sockets)
        s.close();
    if (wrong)
        state.SkipWithError("an Asio round trip failed");
    report_rate(state, parallel * per_round);
}

std::size_t rss_bytes()
{
    std::ifstream statm("/proc/self/statm");
    std::size_t size = 0, resident = 0;
    statm >> size >> resident;
    return resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

// Heap bytes and RSS per idle, connected connection, the server being in another process.
void memory_idle_connection(benchmark::State& state)
{
    constexpr int count = 1000;
    forked_server server;
    if (server.port == 0) {
        state.SkipWithError("could not start the server process");
        return;
    }
    asio::io_context ctx;
    auto client = hl7::client::create(ctx.get_executor(), {.host = "127.0.0.1"}).value();
    auto all_connected = [](const std::vector<hl7::connection>& conns) {
        return std::all_of(conns.begin(), conns.end(), [](auto& c) { return c.state() == hl7::connection_state::connected; });
    };
    double heap_per = 0, rss_per = 0;
    for (auto _ : state) {
        std::vector<hl7::connection> conns;
        conns.reserve(count);
        conns.push_back(client.connect(server.port).value()); // warms up the allocator and the resolver
        for (int i = 0; i < 100 && !all_connected(conns); ++i)
            ctx.run_for(10ms);
        const std::size_t heap0 = mallinfo2().uordblks;
        const std::size_t rss0 = rss_bytes();
        for (int i = 1; i < count; ++i)
            conns.push_back(client.connect(server.port).value());
        for (int i = 0; i < 500 && !all_connected(conns); ++i)
            ctx.run_for(10ms);
        if (!all_connected(conns)) {
            state.SkipWithError("not every connection connected");
            break;
        }
        heap_per = static_cast<double>(mallinfo2().uordblks - heap0) / (count - 1);
        rss_per = static_cast<double>(rss_bytes() - rss0) / (count - 1);
    }
    state.counters["heap_bytes_per_connection"] = heap_per;
    state.counters["rss_bytes_per_connection"] = rss_per;
}

// RSS before and after a million messages through one connection: it must not grow.
void memory_million_messages(benchmark::State& state)
{
    library_server server;
    asio::io_context ctx;
    auto client = hl7::client::create(ctx.get_executor(), {.host = "127.0.0.1"}).value();
    auto conn = client.connect(server.port()).value();
    std::size_t before = 0, after = 0;
    bool wrong = false;
    for (auto _ : state) {
        run_until_done(ctx, [&]() -> asio::awaitable<void> {
            for (int i = 0; i < 20000; ++i)
                wrong = wrong || !(co_await conn.send(sample()));
            before = rss_bytes();
            for (int i = 0; i < 1000000; ++i)
                wrong = wrong || !(co_await conn.send(sample()));
            after = rss_bytes();
        });
    }
    if (wrong)
        state.SkipWithError("a round trip failed");
    state.counters["rss_before_MiB"] = static_cast<double>(before) / (1 << 20);
    state.counters["rss_after_MiB"] = static_cast<double>(after) / (1 << 20);
    state.counters["rss_growth_KiB"] = (static_cast<double>(after) - static_cast<double>(before)) / 1024;
    run_until_done(ctx, conn.close());
}

} // namespace

BENCHMARK_CAPTURE(roundtrip_sequential, plain, false)->Name("roundtrip/sequential")->MinTime(2.0)->UseRealTime();
BENCHMARK_CAPTURE(roundtrip_sequential, tls, true)->Name("roundtrip/sequential_tls")->MinTime(2.0)->UseRealTime();
BENCHMARK(roundtrip_raw_baseline)->Name("roundtrip/raw_baseline")->MinTime(2.0)->UseRealTime();
BENCHMARK(roundtrip_asio_baseline)->Name("roundtrip/asio_baseline")->MinTime(2.0)->UseRealTime();
BENCHMARK(roundtrip_client_only)->Name("roundtrip/client_only")->MinTime(2.0)->UseRealTime();
BENCHMARK(roundtrip_server_only)->Name("roundtrip/server_only")->MinTime(2.0)->UseRealTime();
BENCHMARK(roundtrip_connections_8)->Name("roundtrip/connections_8")->MinTime(2.0)->UseRealTime();
BENCHMARK(roundtrip_connections_8_raw_baseline)->Name("roundtrip/connections_8_raw_baseline")->MinTime(2.0)->UseRealTime();
BENCHMARK(roundtrip_connections_8_asio_baseline)->Name("roundtrip/connections_8_asio_baseline")->MinTime(2.0)->UseRealTime();
BENCHMARK(memory_idle_connection)->Name("memory/idle_connection")->Iterations(1);
BENCHMARK(memory_million_messages)->Name("memory/million_messages")->Iterations(1)->Unit(benchmark::kSecond);
