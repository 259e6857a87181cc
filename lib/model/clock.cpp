// Time and identity: MSH-7 timestamps and MSH-10 control ids.
#include <hl7/model/message.hpp>

#include "model/text.hpp"

#include <atomic>
#include <chrono>
#include <ctime>
#include <random>

namespace hl7 {

void detail::append_timestamp(std::string& out)
{
    const auto now = std::chrono::system_clock::now();
    const std::time_t t = std::chrono::system_clock::to_time_t(now);
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
    // localtime_r takes a process-wide lock and works through the zone's rules: done once a
    // second per thread rather than for every ACK. Offsets change on second boundaries only.
    thread_local std::time_t cached = -1;
    thread_local char seconds[16]; // YYYYMMDDHHMMSS
    thread_local char zone[6];     // +ZZZZ
    if (t != cached) {
        std::tm tm{};
        localtime_r(&t, &tm);
        std::strftime(seconds, sizeof seconds, "%Y%m%d%H%M%S", &tm);
        const long off = tm.tm_gmtoff / 60;
        const long a = off < 0 ? -off : off;
        zone[0] = off < 0 ? '-' : '+';
        zone[1] = static_cast<char>('0' + a / 600);
        zone[2] = static_cast<char>('0' + a / 60 % 10);
        zone[3] = static_cast<char>('0' + a % 60 / 10);
        zone[4] = static_cast<char>('0' + a % 10);
        zone[5] = '\0';
        cached = t;
    }
    out += seconds;
    out += '.';
    out += static_cast<char>('0' + ms / 100);
    out += static_cast<char>('0' + ms / 10 % 10);
    out += static_cast<char>('0' + ms % 10);
    out += zone;
}

std::string make_timestamp()
{
    std::string s;
    s.reserve(23);
    detail::append_timestamp(s);
    return s;
}

std::string make_control_id()
{
    // 8 base-36 digits of per-process randomness, then a process-wide counter in base 36.
    static const std::string prefix = [] {
        std::random_device rd;
        std::uint64_t r = (static_cast<std::uint64_t>(rd()) << 32) ^ rd() ^
                          static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
        std::string p(8, '0');
        for (char& c : p) {
            c = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[r % 36];
            r /= 36;
        }
        return p;
    }();
    static std::atomic<std::uint64_t> counter{0};
    std::uint64_t n = counter.fetch_add(1, std::memory_order_relaxed);
    char digits[13];
    int len = 0;
    do {
        digits[len++] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"[n % 36];
        n /= 36;
    } while (n && len < 12);
    std::string id = prefix;
    while (len > 0)
        id += digits[--len];
    return id;
}


} // namespace hl7
