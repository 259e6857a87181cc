// Running the hl7 tool and the examples as child processes: standard input fed and standard
// output and error collected by a thread of their own (so a chatty child never blocks on a
// full pipe), lines read as they arrive, signals sent, and a hard deadline on everything: a
// child that overruns is killed and the test fails.
#pragma once

#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace hl7::test {

using namespace std::chrono_literals;

/// The path in environment variable `name` (set by meson for the test); fails the test when unset.
inline std::string env_path(const char* name)
{
    const char* value = std::getenv(name);
    REQUIRE_MESSAGE(value != nullptr, "environment variable " << std::string(name) << " is not set (run through meson test)");
    return value;
}

/// How a child process ended.
struct finished {
    int status = -1;            ///< exit status, or 128 + the signal that ended it
    std::string out;            ///< all of standard output
    std::string err;            ///< all of standard error
    long max_rss_kb = 0;        ///< peak resident set size
    bool timed_out = false;     ///< killed at the deadline
};

/// A running child process.
class child {
public:
    /// Starts `argv` (argv[0] is a path). With `stderr_fd`, the child's standard error is that
    /// descriptor (a terminal, say) instead of a pipe, and err() stays empty.
    explicit child(const std::vector<std::string>& argv, int stderr_fd = -1)
    {
        // A child that exits while we write to it must not kill the test with SIGPIPE.
        std::signal(SIGPIPE, SIG_IGN);
        std::array<int, 2> in{}, out{}, err{};
        if (::pipe2(in.data(), O_CLOEXEC) != 0 || ::pipe2(out.data(), O_CLOEXEC) != 0 ||
            ::pipe2(err.data(), O_CLOEXEC) != 0 || ::pipe2(wake_.data(), O_CLOEXEC | O_NONBLOCK) != 0)
            throw std::runtime_error(std::string("pipe: ") + std::strerror(errno));

        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_adddup2(&actions, in[0], STDIN_FILENO);
        posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
        posix_spawn_file_actions_adddup2(&actions, stderr_fd >= 0 ? stderr_fd : err[1], STDERR_FILENO);
        std::vector<char*> args;
        for (const std::string& a : argv)
            args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        const int rc = ::posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ);
        posix_spawn_file_actions_destroy(&actions);
        ::close(in[0]);
        ::close(out[1]);
        ::close(err[1]);
        if (rc != 0) {
            for (int fd : {in[1], out[0], err[0], wake_[0], wake_[1]})
                ::close(fd);
            throw std::runtime_error("cannot run " + argv[0] + ": " + std::strerror(rc));
        }
        in_ = in[1];
        ::fcntl(in_, F_SETFL, O_NONBLOCK);
        pump_ = std::thread([this, o = out[0], e = err[0]] { pump(o, e); });
    }

    child(const child&) = delete;
    child& operator=(const child&) = delete;

    ~child()
    {
        if (!reaped_) {
            ::kill(pid_, SIGKILL);
            reap(0);
        }
        close_stdin();
        pump_.join();
        ::close(wake_[0]);
        ::close(wake_[1]);
    }

    pid_t pid() const { return pid_; }

    /// Queues bytes for the child's standard input.
    void write(std::string_view bytes)
    {
        std::lock_guard lock(mutex_);
        pending_.append(bytes);
        wake();
    }

    /// Closes the child's standard input once what was queued has been written.
    void close_stdin()
    {
        std::lock_guard lock(mutex_);
        closing_ = true;
        wake();
    }

    /// The next line of standard output (without its newline), or nullopt when none came
    /// within `timeout` (or standard output closed first).
    std::optional<std::string> read_line(std::chrono::milliseconds timeout)
    {
        std::unique_lock lock(mutex_);
        std::size_t end = std::string::npos;
        changed_.wait_for(lock, timeout, [&] {
            end = out_.find('\n', line_pos_);
            return end != std::string::npos || out_closed_;
        });
        if (end == std::string::npos)
            return std::nullopt;
        std::string line = out_.substr(line_pos_, end - line_pos_);
        line_pos_ = end + 1;
        return line;
    }

    /// Standard output so far.
    std::string out() const
    {
        std::lock_guard lock(mutex_);
        return out_;
    }

    /// Standard error so far.
    std::string err() const
    {
        std::lock_guard lock(mutex_);
        return err_;
    }

    /// Waits until standard error holds `text`, at most `timeout`; false if it did not (or
    /// standard error closed without it).
    bool wait_for_err(std::string_view text, std::chrono::milliseconds timeout)
    {
        std::unique_lock lock(mutex_);
        return changed_.wait_for(lock, timeout, [&] { return err_.find(text) != std::string::npos || err_closed_; }) &&
               err_.find(text) != std::string::npos;
    }

    void signal(int sig) { ::kill(pid_, sig); }

    /// Closes standard input, waits for the child to end and for its output; kills it when
    /// that takes longer than `timeout`.
    finished wait(std::chrono::milliseconds timeout = 20s)
    {
        close_stdin();
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        finished result;
        {
            std::unique_lock lock(mutex_);
            if (!changed_.wait_until(lock, deadline, [&] { return out_closed_ && err_closed_; }))
                result.timed_out = true;
        }
        if (!result.timed_out)
            result.timed_out = !reap_by(deadline);
        if (result.timed_out) {
            ::kill(pid_, SIGKILL);
            reap(0);
        }
        result.status = status_;
        result.max_rss_kb = max_rss_kb_;
        std::unique_lock lock(mutex_);
        changed_.wait(lock, [&] { return out_closed_ && err_closed_; });
        result.out = out_;
        result.err = err_;
        return result;
    }

private:
    // Polls for the child's end (waitpid has no timeout); true when it ended in time.
    bool reap_by(std::chrono::steady_clock::time_point deadline)
    {
        while (!reap(WNOHANG)) {
            if (std::chrono::steady_clock::now() >= deadline)
                return false;
            std::this_thread::sleep_for(2ms);
        }
        return true;
    }

    bool reap(int flags)
    {
        int status = 0;
        struct rusage usage{};
        pid_t r;
        do {
            r = ::wait4(pid_, &status, flags, &usage);
        } while (r < 0 && errno == EINTR);
        if (r != pid_)
            return false;
        reaped_ = true;
        status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        max_rss_kb_ = usage.ru_maxrss;
        return true;
    }

    void wake()
    {
        const char byte = 0;
        [[maybe_unused]] auto n = ::write(wake_[1], &byte, 1);
    }

    void pump(int out_fd, int err_fd)
    {
        std::array<char, 64 * 1024> buffer;
        int fds[2] = {out_fd, err_fd};
        for (;;) {
            bool has_input = false;
            {
                std::lock_guard lock(mutex_);
                has_input = pending_pos_ < pending_.size();
                if (in_ >= 0 && closing_ && !has_input) {
                    ::close(in_);
                    in_ = -1;
                }
                if (fds[0] < 0 && fds[1] < 0)
                    break;
            }
            std::vector<pollfd> polled{{wake_[0], POLLIN, 0}};
            for (int fd : fds)
                if (fd >= 0)
                    polled.push_back({fd, POLLIN, 0});
            if (in_ >= 0 && has_input)
                polled.push_back({in_, POLLOUT, 0});
            if (::poll(polled.data(), polled.size(), -1) < 0 && errno != EINTR)
                break;
            for (const pollfd& p : polled) {
                if (p.revents == 0)
                    continue;
                if (p.fd == wake_[0]) {
                    while (::read(wake_[0], buffer.data(), buffer.size()) > 0) {
                    }
                } else if (p.fd == in_) {
                    std::lock_guard lock(mutex_);
                    const ssize_t n = ::write(in_, pending_.data() + pending_pos_, pending_.size() - pending_pos_);
                    if (n > 0)
                        pending_pos_ += static_cast<std::size_t>(n);
                    else if (n < 0 && errno != EAGAIN && errno != EINTR)
                        pending_pos_ = pending_.size(); // the child closed its standard input
                    if (pending_pos_ == pending_.size()) {
                        pending_.clear();
                        pending_pos_ = 0;
                    }
                } else {
                    const ssize_t n = ::read(p.fd, buffer.data(), buffer.size());
                    if (n < 0 && (errno == EAGAIN || errno == EINTR))
                        continue;
                    std::lock_guard lock(mutex_);
                    const bool is_out = p.fd == fds[0];
                    if (n > 0) {
                        (is_out ? out_ : err_).append(buffer.data(), static_cast<std::size_t>(n));
                    } else {
                        ::close(p.fd);
                        (is_out ? fds[0] : fds[1]) = -1;
                        (is_out ? out_closed_ : err_closed_) = true;
                    }
                    changed_.notify_all();
                }
            }
        }
        std::lock_guard lock(mutex_);
        if (in_ >= 0) {
            ::close(in_);
            in_ = -1;
        }
    }

    pid_t pid_ = -1;
    std::array<int, 2> wake_{-1, -1}; // wakes the pump when there is input to write
    std::thread pump_;
    bool reaped_ = false;
    int status_ = -1;
    long max_rss_kb_ = 0;

    mutable std::mutex mutex_;
    std::condition_variable changed_;
    int in_ = -1;
    std::string pending_;        // input not yet written, from pending_pos_ on
    std::size_t pending_pos_ = 0;
    bool closing_ = false;
    std::string out_, err_;
    std::size_t line_pos_ = 0;
    bool out_closed_ = false, err_closed_ = false;
};

/// Runs a command to its end with `input` on its standard input.
inline finished run(const std::vector<std::string>& argv, std::string_view input = {},
                   std::chrono::milliseconds timeout = 20s)
{
    child c(argv);
    c.write(input);
    return c.wait(timeout);
}

/// Splits text into lines (a last line without newline counts; no empty last line).
inline std::vector<std::string> lines(const std::string& text)
{
    std::vector<std::string> out;
    std::size_t pos = 0;
    while (pos < text.size()) {
        const std::size_t end = text.find('\n', pos);
        out.push_back(text.substr(pos, end - pos));
        if (end == std::string::npos)
            break;
        pos = end + 1;
    }
    return out;
}

/// `text` with each newline turned into a CR, the HL7 segment terminator.
inline std::string cr_lines(std::string text)
{
    std::replace(text.begin(), text.end(), '\n', '\r');
    return text;
}

} // namespace hl7::test
