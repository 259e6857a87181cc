// libFuzzer property target for the server's session core: steps it with random inputs (bytes
// and canned frames read, handler results and exceptions, writes finishing or failing, time
// passing, stops, aborts, handshakes), in any order, legal or not, and checks after every
// step that:
//   - at most one handler runs, at most one write and one read are outstanding, and a reply
//     answers the message handed out last (replies in order);
//   - nothing is read, handled or written after the close, and `done` comes once, only
//     when nothing is outstanding, after the close;
//   - the timer is never armed later than the earliest deadline;
//   - the byte budget's use equals the session's charge, never beyond the limit, and is all
//     given back once the session is destroyed;
//   - every message received is reported one way (received, ack_ignored, unparsable,
//     limit_reached), every one reported received is handed to the handler, and every one
//     the handler answered is written unless it asked for no acknowledgement or the
//     connection closed; every bad frame is reported.
// Byte 0..3 choose the configuration; the rest is a sequence of operations.
#include "core/session_core.hpp"

#include <hl7/model/ack.hpp>
#include <hl7/model/mllp.hpp>

#include <boost/asio/error.hpp>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace std::chrono_literals;
using hl7::detail::session_action;
using akind = session_action::kind;
using ekind = hl7::server_event::kind;

void check(bool ok)
{
    if (!ok)
        __builtin_trap();
}

struct input {
    const std::uint8_t* p;
    std::size_t n;
    std::uint8_t byte() { return n ? (--n, *p++) : 0; }
    std::string_view bytes(std::size_t k)
    {
        k = std::min(k, n);
        std::string_view s(reinterpret_cast<const char*>(p), k);
        p += k;
        n -= k;
        return s;
    }
};

std::string adt(unsigned id, bool enhanced_never)
{
    return "MSH|^~\\&|SND|FAC|RCV|FAC|20240101||ADT^A01^ADT_A01|C" + std::to_string(id) + "|P|2.5.1" +
           (enhanced_never ? "|||NE|NE" : "") + "\rPID|1||" + std::to_string(id) + "\r";
}

struct model {
    bool reading = false, writing = false, handshaking = false, handling = false, closed = false, done = false;
    std::string handed;       // control id of the message handed out last
    std::string expected;     // the MSA-2 its reply must carry
    bool handed_never = false; // it asks for no error acknowledgement (by MSH-15/16): an AE is not sent
    bool answered = true;     // the message handed out last was answered (or deliberately not)
    std::uint64_t events_received = 0, events_other = 0, bad_frames = 0, handles = 0;
};

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size)
{
    input in{data, size};
    const std::uint8_t c0 = in.byte(), c1 = in.byte(), c2 = in.byte(), c3 = in.byte();
    hl7::detail::session_config config;
    config.max_frame = 16 + (c0 & 0x3F) * 8;
    config.max_segments = c1 & 0x0F;
    config.max_fields = (c1 >> 4) * 4;
    config.max_bad_frames = c2 & 0x07;
    config.idle_timeout = std::chrono::seconds(c2 >> 5);
    config.frame_timeout = std::chrono::seconds(c3 & 0x07);
    config.write_timeout = std::chrono::seconds((c3 >> 3) & 0x07);
    config.close_timeout = std::chrono::seconds(c0 >> 6);
    config.tls = (c3 & 0x40) != 0;
    config.handshake_timeout = std::chrono::seconds(2);
    if (c3 & 0x80)
        config.allowed_client_names = {"allowed"};
    config.observed = true;

    const std::size_t limit = (c1 & 1) ? 0 : 4096;
    hl7::detail::server_shared shared(limit, UINT32_MAX); // no event is left out: each is counted
    auto now = hl7::detail::clock::time_point{} + 1h;
    model m;
    m.handshaking = config.tls;
    std::string chunk; // the bytes of the last read, valid until the next one is asked for
    {
        hl7::detail::session_core core(config, shared, {}, now);
        auto take = [&] {
            session_action a;
            while (core.next(a)) {
                check(!m.done);
                switch (a.what()) {
                case akind::handshake: check(config.tls && m.handshaking); break;
                case akind::read:
                    check(!m.closed && !m.reading && !m.writing && !m.handling);
                    m.reading = true;
                    break;
                case akind::handle:
                    check(!m.closed && !m.handling && !m.writing && m.answered);
                    m.handling = true;
                    m.answered = false;
                    m.handed = std::string(a.message().control_id());
                    m.handed_never = !hl7::ack_code_for(a.message(), hl7::verdict::error);
                    ++m.handles;
                    break;
                case akind::write: {
                    check(!m.closed && !m.writing && !m.handling);
                    m.writing = true;
                    auto reply = hl7::message::parse(a.bytes());
                    check(reply.has_value());
                    if (!m.answered) { // the reply to the message handed out last
                        const auto msa2 = reply.value().get("MSA.2");
                        check((msa2 ? msa2.value().raw() : std::string_view{}) == m.expected);
                        m.answered = true;
                    }
                    break;
                }
                case akind::close: check(!m.closed); m.closed = true; break;
                case akind::notify: {
                    const auto& e = a.event();
                    check(e.suppressed == 0);
                    if (e.what == ekind::received)
                        ++m.events_received;
                    else if (e.what == ekind::ack_ignored || e.what == ekind::unparsable ||
                             (e.what == ekind::limit_reached && e.error == hl7::errc::message_too_complex))
                        ++m.events_other;
                    else if (e.what == ekind::bad_frame)
                        ++m.bad_frames;
                    break;
                }
                case akind::arm_timer: break;
                case akind::done:
                    check(m.closed && !m.reading && !m.writing && !m.handshaking && !m.handling);
                    m.done = true;
                    break;
                }
            }
            check(core.armed() <= core.due());
            check(shared.budget.used() == core.charged());
            check(limit == 0 || shared.budget.used() <= limit);
            const auto c = shared.stats.snapshot();
            check(c.received == m.events_received + m.events_other);
            check(c.bad_frames == m.bad_frames);
            // A message reported received is handed to the handler, unless taking it spent
            // the budget, which closes the connection.
            check(m.events_received == m.handles || (m.closed && m.events_received == m.handles + 1));
        };
        take();
        unsigned next_id = 0;
        while (in.n > 0 && !m.done) {
            const std::uint8_t op = in.byte();
            switch (op % 16) {
            case 0:
            case 1:
            case 2: { // bytes read: raw ones from the input, or canned frames
                std::string bytes;
                if (op % 16 == 0)
                    bytes = std::string(in.bytes(in.byte()));
                else if (op % 16 == 1)
                    bytes = hl7::mllp::encode(adt(next_id++, (op & 0x10) != 0));
                else
                    bytes = hl7::mllp::encode("MSH|^~\\&|R|F|S|F|2024||ACK^A01^ACK|A" + std::to_string(next_id++) +
                                              "|P|2.5.1\rMSA|AA|C1\r");
                if (op & 0x20)
                    bytes = bytes.substr(0, bytes.size() / 2); // half of it
                if (m.reading) {
                    m.reading = false;
                    chunk = std::move(bytes);
                    core.received(chunk, now);
                } else {
                    core.received(bytes, now); // not asked for: must be ignored, and not kept
                }
                break;
            }
            case 3:
                if (m.reading)
                    m.reading = false;
                core.read_failed((op & 0x10) ? boost::system::error_code(boost::asio::error::eof)
                                             : boost::system::error_code(boost::asio::error::operation_aborted),
                                 now);
                break;
            case 4:
            case 5:
            case 6:
            case 7: {
                const bool legal = m.handling;
                m.handling = false;
                if (legal)
                    m.expected = m.handed; // an AE answers the message itself
                if (op % 16 == 4) {
                    // The handler's own reply: make_ack of a stand-in for the message handed out.
                    auto stand_in = hl7::message::parse(adt(0, false)).value();
                    (void)stand_in.set("MSH.10", m.handed.empty() ? "X" : m.handed);
                    if (legal)
                        m.expected = std::string(stand_in.control_id());
                    core.handled(hl7::make_ack(stand_in, hl7::verdict::accept), now);
                } else if (op % 16 == 5) {
                    core.handled(hl7::errc::no_ack_requested, now);
                    if (legal)
                        m.answered = true;
                } else if (op % 16 == 6) {
                    core.handled(hl7::errc::closed, now);
                } else {
                    core.handler_threw("thrown", now);
                }
                if (legal && op % 16 != 4 && m.handed_never)
                    m.answered = true; // its AE is not sent: it asked for none
                break;
            }
            case 8:
            case 9:
                m.writing = false;
                core.written(op % 16 == 8 ? boost::system::error_code{} : boost::asio::error::broken_pipe, now);
                break;
            case 10:
                now += std::chrono::milliseconds(in.byte() * 50);
                core.timer_fired(now);
                break;
            case 11: core.stop(now); break;
            case 12: core.abort(hl7::errc::session_failed, "aborted", now); break;
            case 13:
                m.handshaking = false;
                core.handshake_done({(op & 0x10) ? "allowed" : "other"}, now);
                break;
            case 14:
                m.handshaking = false;
                core.handshake_failed(hl7::errc::tls_handshake_failed, now);
                break;
            default: now += std::chrono::milliseconds(in.byte()); break;
            }
            take();
            // A handler answered after the close goes unanswered, as does one asking for none.
            if (m.closed)
                m.answered = true;
        }
    }
    check(shared.budget.used() == 0);
    return 0;
}
