// Writing standard output and standard error from a thread of their own: records complete
// once written, in order; a small record with nothing ahead of it is written at once to a pipe
// or /dev/null, never ahead of one that waits; log lines are dropped and counted when too many
// wait; a reader that goes away fails what waits, and a reader that never reads is given up
// at destruction.
#include "writer.hpp"

#include "support/async_util.hpp"

#include <doctest/doctest.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/bind_executor.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <atomic>
#include <climits>
#include <cstdio>
#include <csignal>
#include <optional>
#include <fcntl.h>
#include <string>
#include <thread>
#include <unistd.h>

namespace asio = boost::asio;
using boost::system::error_code;
using hl7::tool::fd_writer;

namespace {

struct pipe_pair {
    pipe_pair()
    {
        REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
        std::signal(SIGPIPE, SIG_IGN);
    }
    ~pipe_pair()
    {
        for (int fd : fds)
            if (fd >= 0)
                ::close(fd);
    }
    std::string read_all_available()
    {
        ::fcntl(fds[0], F_SETFL, O_NONBLOCK);
        std::string out;
        char buf[4096];
        for (;;) {
            const ssize_t n = ::read(fds[0], buf, sizeof buf);
            if (n <= 0)
                break;
            out.append(buf, static_cast<std::size_t>(n));
        }
        return out;
    }
    void close_reader()
    {
        ::close(fds[0]);
        fds[0] = -1;
    }
    int fds[2]{-1, -1};
};

} // namespace

TEST_CASE("records are written in order, each completing once written")
{
    pipe_pair p;
    {
        fd_writer w(p.fds[1]);
        hl7::test::run_async([&]() -> asio::awaitable<void> {
            for (int i = 0; i < 3; ++i) {
                auto writing = w.async_write("record " + std::to_string(i) + "\n", asio::as_tuple(asio::use_awaitable));
                auto [ec] = co_await std::move(writing);
                CHECK(!ec);
            }
        });
    }
    CHECK(p.read_all_available() == "record 0\nrecord 1\nrecord 2\n");
}

TEST_CASE("a small record is written at once to a pipe or /dev/null with nothing waiting, and to nothing else")
{
    pipe_pair p;
    const int null = ::open("/dev/null", O_WRONLY | O_CLOEXEC);
    REQUIRE(null >= 0);
    FILE* file = std::tmpfile();
    REQUIRE(file != nullptr);
    {
        fd_writer to_pipe(p.fds[1]);
        fd_writer to_null(null);
        fd_writer to_file(::fileno(file));
        CHECK(to_pipe.try_write("record\n"));
        CHECK(to_null.try_write("record\n"));
        CHECK(!to_pipe.try_write(std::string(PIPE_BUF + 1, 'x')));
        CHECK(!to_file.try_write("record\n"));
    }
    CHECK(p.read_all_available() == "record\n");
    CHECK(std::ftell(file) == 0);
    std::fclose(file);
    ::close(null);
}

TEST_CASE("a small record is not written at once while another waits for the reader: it goes after it")
{
    pipe_pair p;
    const std::string big(1 << 20, 'b'); // more than the pipe holds: the thread waits for the reader
    std::optional<error_code> first, second;
    std::string read;
    asio::io_context ctx; // run once the writer is gone, with both completions in it
    {
        fd_writer w(p.fds[1]);
        w.async_write(big, asio::bind_executor(ctx, [&](error_code ec) { first = ec; }));
        CHECK(!w.try_write("small\n"));
        w.async_write("small\n", asio::bind_executor(ctx, [&](error_code ec) { second = ec; }));
        std::thread reader([&] {
            char buf[65536];
            while (read.size() < big.size() + 6) {
                const ssize_t n = ::read(p.fds[0], buf, sizeof buf);
                if (n <= 0)
                    break;
                read.append(buf, static_cast<std::size_t>(n));
            }
        });
        reader.join();
    }
    ctx.run();
    CHECK(read == big + "small\n");
    REQUIRE(first.has_value());
    REQUIRE(second.has_value());
    CHECK(!*first);
    CHECK(!*second);
}

TEST_CASE("a small record is not written at once to a pipe whose reader is gone: async_write reports it")
{
    pipe_pair p;
    p.close_reader();
    fd_writer w(p.fds[1]);
    CHECK(!w.try_write("lost\n"));
}

TEST_CASE("log lines beyond the queue's bound are dropped and their number written once there is room")
{
    pipe_pair p;
    {
        fd_writer w(p.fds[1], {}, 100);
        for (int i = 0; i < 1000; ++i)
            w.write_line("a line of twenty-ish\n");
        // Whether the thread took some lines in between depends on timing; some surely were dropped.
        CHECK(w.dropped() > 0);
        w.write_line("after\n");
    }
    const std::string out = p.read_all_available();
    CHECK(out.find("log lines dropped (standard error is slow)\n") != std::string::npos);
}

TEST_CASE("a reader that goes away fails the record being written and every later one, and is told once")
{
    pipe_pair p;
    p.close_reader();
    std::atomic<int> broken{0};
    error_code told;
    {
        fd_writer w(p.fds[1], [&](error_code ec) {
            told = ec;
            ++broken;
        });
        hl7::test::run_async([&]() -> asio::awaitable<void> {
            for (int i = 0; i < 3; ++i) {
                auto writing = w.async_write("lost\n", asio::as_tuple(asio::use_awaitable));
                auto [ec] = co_await std::move(writing);
                CHECK(ec == boost::system::errc::broken_pipe);
            }
        });
    }
    CHECK(broken == 1);
    CHECK(told == boost::system::errc::broken_pipe);
}

TEST_CASE("a reader that never reads is given up at destruction: what waits fails with operation_aborted")
{
    pipe_pair p;
    std::optional<fd_writer> w(std::in_place, p.fds[1], std::function<void(error_code)>{}, std::size_t{1} << 20,
                               std::chrono::milliseconds(200));
    std::optional<error_code> result;
    asio::io_context ctx;
    w->async_write(std::string(1 << 20, 'z'), [&](error_code ec) { result = ec; }); // more than a pipe holds
    w.reset(); // returns after the grace period
    ctx.run();
    REQUIRE(result.has_value());
    CHECK(*result == asio::error::operation_aborted);
}
