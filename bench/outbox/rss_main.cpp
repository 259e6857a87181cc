// hl7-outbox-rss: the memory of a process whose outbox holds a million queued messages. It
// stores them (durably, with 256 enqueues outstanding at a time), then delivers from that
// queue for a few seconds, and prints its resident set size at each step beside the size at
// start: the queue lives in the file, and a lane reads only the next few messages.
//
// Usage: hl7-outbox-rss [MESSAGES] [SECONDS OF DELIVERY]   (defaults: 1000000 5)
// Exits 1 when the outbox does not hold what was stored or delivered nothing.
#include <hl7/net/server.hpp>
#include <hl7/outbox/outbox.hpp>

#include "support/util.hpp"

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

namespace asio = boost::asio;
using error_code = boost::system::error_code;

namespace {

// VmRSS or VmHWM from /proc/self/status, in MiB.
double memory_mib(const char* field)
{
    std::ifstream status("/proc/self/status");
    for (std::string line; std::getline(status, line);)
        if (line.starts_with(field))
            return std::strtod(line.c_str() + std::strlen(field) + 1, nullptr) / 1024.0;
    return -1;
}

std::uint64_t count(hl7::outbox& box, asio::io_context& ctx, bool acknowledged)
{
    std::uint64_t n = 0;
    box.async_status([&](error_code ec, std::vector<hl7::outbox_lane_status> lanes) {
        for (const auto& l : lanes)
            n += ec ? 0 : acknowledged ? l.acknowledged : l.queued;
    });
    ctx.restart();
    ctx.run();
    return n;
}

} // namespace

int main(int argc, char** argv)
{
    const std::uint64_t messages = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 1000000;
    const int seconds = argc > 2 ? std::atoi(argv[2]) : 5;
    const char* tmp = std::getenv("TMPDIR");
    std::string dir = std::string(tmp && *tmp ? tmp : "/tmp") + "/hl7-outbox-rss-XXXXXX";
    if (::mkdtemp(dir.data()) == nullptr)
        return 1;
    const std::string path = dir + "/outbox.db";
    const hl7::message base = hl7::message::parse(hl7::test::read_sample("adt_a01.hl7")).value();

    asio::io_context server_ctx;
    std::atomic<std::uint64_t> received{0};
    auto server = hl7::server::create(server_ctx.get_executor(),
                                      {.host = "127.0.0.1", .port = 0, .observer = [&](const hl7::server_event& e) {
                                           if (e.what == hl7::server_event::kind::received)
                                               ++received;
                                       }})
                      .value();
    std::thread server_thread([&] { server_ctx.run(); });
    const hl7::outbox_destination to{.host = "127.0.0.1", .port = server.local_endpoint().port()};
    int status = 0;

    const double at_start = memory_mib("VmRSS:");
    double after_enqueue = 0, while_delivering = 0, peak_delivering = 0;
    double enqueue_rate = 0;
    std::uint64_t delivered = 0;
    {
        asio::io_context ctx;
        auto box = hl7::outbox::open(ctx.get_executor(), {.location = path}).value();
        std::uint64_t next = 0, failed = 0;
        std::function<void()> produce = [&] {
            if (next == messages)
                return;
            hl7::message m = base;
            (void)m.set("MSH.10", hl7::test::label("R", ++next));
            box.async_enqueue(to, std::move(m), {}, [&](error_code ec, hl7::enqueue_result) {
                failed += ec ? 1 : 0;
                produce();
            });
        };
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < 256; ++i)
            produce();
        ctx.run();
        enqueue_rate = static_cast<double>(messages) /
                       std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (failed != 0 || count(box, ctx, false) != messages) {
            std::fprintf(stderr, "the outbox does not hold the %llu messages stored\n",
                         static_cast<unsigned long long>(messages));
            status = 1;
        }
        after_enqueue = memory_mib("VmRSS:");
        box.async_close([] {});
        ctx.restart();
        ctx.run();
    }
    {
        asio::io_context ctx;
        auto box = hl7::outbox::open(ctx.get_executor(), {.location = path}).value();
        asio::cancellation_signal stop;
        box.async_run(to, {}, asio::bind_cancellation_slot(stop.slot(), [](error_code) {}));
        const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
        while (std::chrono::steady_clock::now() < end) {
            ctx.run_for(std::chrono::milliseconds(100));
            while_delivering = std::max(while_delivering, memory_mib("VmRSS:"));
        }
        stop.emit(asio::cancellation_type::terminal);
        ctx.run_for(std::chrono::seconds(30));
        ctx.restart();
        delivered = count(box, ctx, true);
        if (delivered == 0 || delivered != received || count(box, ctx, false) != messages - delivered) {
            std::fprintf(stderr, "delivery from the queue went wrong: %llu acknowledged, %llu received\n",
                         static_cast<unsigned long long>(delivered), static_cast<unsigned long long>(received.load()));
            status = 1;
        }
        peak_delivering = memory_mib("VmHWM:");
        box.async_close([] {});
        ctx.restart();
        ctx.run();
    }
    std::printf("messages queued: %llu (file %.0f MiB), stored at %.0f durable enqueues/s with 256 outstanding\n",
                static_cast<unsigned long long>(messages),
                static_cast<double>(std::filesystem::file_size(path)) / (1 << 20), enqueue_rate);
    std::printf("RSS at start: %.1f MiB; after storing them: %.1f MiB; while delivering from the full queue "
                "(%llu delivered in %d s): %.1f MiB; peak of the process: %.1f MiB\n",
                at_start, after_enqueue, static_cast<unsigned long long>(delivered), seconds, while_delivering,
                peak_delivering);
    asio::co_spawn(server_ctx, server.async_close(asio::use_awaitable), asio::detached);
    server_ctx.stop();
    server_thread.join();
    std::error_code ignored;
    std::filesystem::remove_all(dir, ignored);
    return status;
}
