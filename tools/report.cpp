#include "report.hpp"

#include "output.hpp"

#include <cstdio>

#include <unistd.h>

namespace hl7::tool {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

// `<n> <MSH-10> <MSA-1> <MSA-2> <round trip ms>`, then the error if any; "-" for what is absent.
std::string text_line(const result& r)
{
    auto column = [](const std::optional<std::string>& v) { return v && !v->empty() ? *v : std::string("-"); };
    std::string line = std::to_string(r.index) + ' ' + column(r.control_id) + ' ' + column(r.ack_code) + ' ' +
                       column(r.ack_control_id) + ' ';
    if (r.round_trip) {
        char ms[32];
        std::snprintf(ms, sizeof ms, "%.3f", static_cast<double>(r.round_trip->count()) / 1000.0);
        line += ms;
    } else {
        line += '-';
    }
    if (!r.error.empty())
        line += ' ' + r.error;
    return line + '\n';
}

std::string json_line(const result& r, std::string_view extra)
{
    auto string_or_null = [](const std::optional<std::string>& v) { return v ? json_string(*v) : "null"; };
    return "{\"index\":" + std::to_string(r.index) + ",\"control_id\":" + string_or_null(r.control_id) +
           ",\"ack_code\":" + string_or_null(r.ack_code) + ",\"ack_control_id\":" + string_or_null(r.ack_control_id) +
           ",\"rtt_us\":" + (r.round_trip ? std::to_string(r.round_trip->count()) : "null") +
           ",\"error\":" + (r.error.empty() ? "null" : json_string(r.error)) + std::string(extra) + "}\n";
}

progress::progress() : enabled_(::isatty(STDERR_FILENO) == 1), above_(::isatty(STDOUT_FILENO) == 1) {}

void progress::tick(std::size_t sent, std::size_t accepted, std::size_t failed)
{
    const auto now = steady::now();
    if (!enabled_ || sent <= 20 || (shown_ && now - drawn_ < 100ms))
        return;
    const double seconds = std::chrono::duration<double>(now - start_).count();
    char buf[160];
    std::snprintf(buf, sizeof buf, "sent %zu, acknowledged %zu, failed %zu, %.0f msg/s", sent, accepted, failed,
                  seconds > 0 ? static_cast<double>(accepted + failed) / seconds : 0.0);
    text_ = buf;
    drawn_ = now;
    draw();
}

void progress::print(const std::string& line)
{
    if (shown_ && above_)
        erase();
    write_stdout(line);
    if (!text_.empty() && above_ && enabled_)
        draw();
}

void progress::finish()
{
    if (shown_)
        erase();
    text_.clear();
}

void progress::draw()
{
    std::fprintf(stderr, "\r%s\033[K", text_.c_str());
    std::fflush(stderr);
    shown_ = true;
}

void progress::erase()
{
    std::fputs("\r\033[K", stderr);
    std::fflush(stderr);
    shown_ = false;
}

} // namespace hl7::tool
