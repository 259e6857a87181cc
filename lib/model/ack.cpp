#include <hl7/model/ack.hpp>

#include <boost/outcome/try.hpp>

#include "model/append.hpp"

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

// What make_ack copies from the received header, read with message::get through paths
// parsed once: a server builds an ACK for every message it answers.
struct header_fields {
    std::string_view fields[17]; // fields[n]: MSH-n as on the wire, for n from 3 (empty when absent)
    std::string_view trigger;    // MSH-9.2
    bool present = false;        // the message has an MSH segment

    explicit header_fields(const message& m)
    {
        static const struct paths {
            path msh = path::parse("MSH").value();
            path trigger = path::parse("MSH.9.2").value();
        } p;
        const auto segment = m.get(p.msh);
        present = segment && segment.value().present();
        if (!present)
            return;
        trigger = m.get(p.trigger).value().raw();
        path field = p.msh;
        for (const std::uint32_t n : {3, 4, 5, 6, 10, 11, 12, 15, 16}) {
            field.field = n;
            fields[n] = m.get(field).value().raw();
        }
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
    s += h.trigger;
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
