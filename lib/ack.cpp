#include <hl7/ack.hpp>

#include <boost/outcome/try.hpp>

#include "append.hpp"

#include <algorithm>
#include <iterator>

namespace hl7 {
namespace {

std::string_view table_0357_text(std::uint16_t code) noexcept
{
    switch (code) {
    case 0: return "Message accepted";
    case 100: return "Segment sequence error";
    case 101: return "Required field missing";
    case 102: return "Data type error";
    case 103: return "Table value not found";
    case 104: return "Value too long";
    case 200: return "Unsupported message type";
    case 201: return "Unsupported event code";
    case 202: return "Unsupported processing id";
    case 203: return "Unsupported version id";
    case 204: return "Unknown key identifier";
    case 205: return "Duplicate key identifier";
    case 206: return "Application record locked";
    case 207: return "Application internal error";
    default: return {};
    }
}

// The fields of a message's first MSH segment as on the wire, read in one pass: fields[n]
// is MSH-n for n from 2 to 16 (empty when absent).
struct header_fields {
    std::string_view fields[17];
    bool present = false;

    explicit header_fields(const message& m)
    {
        static const path msh = path::parse("MSH").value();
        const auto segment = m.get(msh);
        if (!segment || !segment.value().present())
            return;
        present = true;
        const std::string_view text = segment.value().raw();
        const char sep = m.delimiters().field;
        // MSH-1 is the segment's first field separator (right after "MSH" unless the segment
        // is malformed), as for message::get.
        std::size_t at = std::min(text.find(sep), text.size());
        for (std::size_t n = 2; n < std::size(fields) && at < text.size(); ++n) {
            const std::size_t next = std::min(text.find(sep, at + 1), text.size());
            fields[n] = text.substr(at + 1, next - at - 1);
            at = next;
        }
    }

    /// Component `c` of the first repetition of field `n`.
    std::string_view component(std::size_t n, std::size_t c, const hl7::delimiters& d) const
    {
        std::string_view v = fields[n].substr(0, fields[n].find(d.repetition));
        for (; c > 1; --c) {
            const std::size_t next = v.find(d.component);
            if (next == std::string_view::npos)
                return {};
            v.remove_prefix(next + 1);
        }
        return v.substr(0, v.find(d.component));
    }
};

} // namespace

outcome::result<message> make_ack(const message& received, ack_code code, const ack_options& options)
{
    const header_fields h(received);
    if (!h.present)
        return errc::not_hl7;
    const hl7::delimiters& d = received.delimiters();
    const bool enhanced = !h.fields[15].empty() || !h.fields[16].empty();
    const char* const codes[] = {"AA", "AE", "AR", "CA", "CE", "CR"};
    const std::string_view msa1 = codes[static_cast<int>(code) + (enhanced ? 3 : 0)];

    // The swapped sender/receiver fields are copied raw: they may carry components (HD) in
    // the received message's own delimiters, which the ACK shares.
    std::string s;
    s.reserve(256);
    s += {'M', 'S', 'H', d.field, d.component, d.repetition, d.escape, d.subcomponent};
    if (d.truncation)
        s += d.truncation;
    for (const std::size_t n : {5, 6, 3, 4}) {
        s += d.field;
        s += h.fields[n];
    }
    s += d.field;
    detail::append_escaped(s, make_timestamp(), d); // MSH-7
    s += d.field;                                   // MSH-8
    s += d.field;
    s += "ACK";
    s += d.component;
    s += h.component(9, 2, d);
    s += d.component;
    s += "ACK";
    s += d.field;
    s += make_control_id(); // MSH-10 (letters and digits only)
    s += d.field;
    s += h.fields[11];
    s += d.field;
    s += h.fields[12];
    s += "\rMSA";
    s += d.field;
    s += msa1;
    s += d.field;
    s += h.fields[10];
    if (!options.text.empty()) {
        s += d.field;
        detail::append_escaped(s, options.text, d);
    }
    if (code != ack_code::accept && (options.error_code != 0 || !options.error_text.empty())) {
        // ERR-3 = <code>^<text>^HL70357, ERR-4 = E, ERR-8 = the user message.
        const std::uint16_t err = options.error_code ? options.error_code : 207;
        s += "\rERR";
        s.append(3, d.field);
        s += std::to_string(err);
        s += d.component;
        detail::append_escaped(s, table_0357_text(err), d);
        s += d.component;
        s += "HL70357";
        s += d.field;
        s += 'E';
        if (!options.error_text.empty()) {
            s.append(4, d.field);
            detail::append_escaped(s, options.error_text, d);
        }
    }
    s += '\r';
    // Built in one piece: a set() per field would re-index the ACK each time.
    BOOST_OUTCOME_TRY(auto ack, message::parse(std::move(s)));
    return ack;
}

outcome::result<void, nack> accepted(const message& ack)
{
    const auto code = ack.get("MSA.1");
    if (!code || !code.value().present())
        return nack{errc::garbled_ack, {}};
    const std::string_view c = code.value().raw();
    if (c == "AA" || c == "CA")
        return outcome::success();
    boost::system::error_code ec;
    if (c == "AE" || c == "CE")
        ec = ack_errc::application_error;
    else if (c == "AR" || c == "CR")
        ec = ack_errc::application_reject;
    else
        return nack{errc::garbled_ack, {}};

    std::string text = ack.get("MSA.3").value().decoded();
    const std::size_t errs = ack.count("ERR").value();
    hl7::path user_message = path::parse("ERR.8").value();
    hl7::path code_text = path::parse("ERR.3.2").value();
    for (std::uint32_t i = 1; i <= errs; ++i) {
        user_message.occurrence = code_text.occurrence = i;
        std::string t = ack.get(user_message).value().decoded();
        if (t.empty())
            t = ack.get(code_text).value().decoded();
        if (t.empty())
            continue;
        if (!text.empty())
            text += "; ";
        text += t;
    }
    return nack{ec, std::move(text)};
}

} // namespace hl7
