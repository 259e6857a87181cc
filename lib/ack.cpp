#include <hl7/ack.hpp>

#include <boost/outcome/try.hpp>

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

std::string_view raw(const message& m, const path& p)
{
    auto v = m.get(p);
    return v ? v.value().raw() : std::string_view{};
}

// Parsed once: a server builds an ACK for every message it answers.
struct header_paths {
    static path at(std::string_view text) { return path::parse(text).value(); }
    path msh = at("MSH");
    path swapped[4] = {at("MSH.5"), at("MSH.6"), at("MSH.3"), at("MSH.4")};
    path trigger = at("MSH.9.2");
    path control_id = at("MSH.10");
    path processing_id = at("MSH.11");
    path version = at("MSH.12");
    path accept_ack_type = at("MSH.15");
    path application_ack_type = at("MSH.16");
};

const header_paths& paths()
{
    static const header_paths p;
    return p;
}

} // namespace

outcome::result<message> make_ack(const message& received, ack_code code, const ack_options& options)
{
    const header_paths& h = paths();
    BOOST_OUTCOME_TRY(const std::size_t headers, received.count(h.msh));
    if (headers == 0)
        return errc::not_hl7;
    const hl7::delimiters& d = received.delimiters();
    const bool enhanced = !raw(received, h.accept_ack_type).empty() || !raw(received, h.application_ack_type).empty();
    const char* const codes[] = {"AA", "AE", "AR", "CA", "CE", "CR"};
    const std::string_view msa1 = codes[static_cast<int>(code) + (enhanced ? 3 : 0)];

    // The swapped sender/receiver fields are copied raw: they may carry components (HD) in
    // the received message's own delimiters, which the ACK shares.
    std::string s;
    s.reserve(256);
    s += {'M', 'S', 'H', d.field, d.component, d.repetition, d.escape, d.subcomponent};
    if (d.truncation)
        s += d.truncation;
    for (const path& p : h.swapped) {
        s += d.field;
        s += raw(received, p);
    }
    s += d.field;
    s += escape(make_timestamp(), d); // MSH-7
    s += d.field;          // MSH-8
    s += d.field;
    s += "ACK";
    s += d.component;
    s += raw(received, h.trigger);
    s += d.component;
    s += "ACK";
    s += d.field;
    s += make_control_id(); // MSH-10 (letters and digits only)
    s += d.field;
    s += raw(received, h.processing_id);
    s += d.field;
    s += raw(received, h.version);
    s += "\rMSA";
    s += d.field;
    s += msa1;
    s += d.field;
    s += raw(received, h.control_id);
    if (!options.text.empty()) {
        s += d.field;
        s += escape(options.text, d);
    }
    if (code != ack_code::accept && (options.error_code != 0 || !options.error_text.empty())) {
        // ERR-3 = <code>^<text>^HL70357, ERR-4 = E, ERR-8 = the user message.
        const std::uint16_t err = options.error_code ? options.error_code : 207;
        s += "\rERR";
        s.append(3, d.field);
        s += std::to_string(err);
        s += d.component;
        s += escape(table_0357_text(err), d);
        s += d.component;
        s += "HL70357";
        s += d.field;
        s += 'E';
        if (!options.error_text.empty()) {
            s.append(4, d.field);
            s += escape(options.error_text, d);
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
