namespace Vism.Conformance;

/// <summary>The text a check proves: a normative statement of the virtio-ism v1 device chapter, or a
/// decision DESIGN.md takes where v1 is silent.</summary>
/// <param name="Source">Where it is written, e.g. <c>v1 "Alloc ISM Region", device normative</c>.</param>
/// <param name="Text">The statement, quoted.</param>
public sealed record Statement(string Source, string Text)
{
    /// <summary>A statement of the v1 chapter (<c>shared/spec/virtio-ism-v1.tex</c>).</summary>
    /// <param name="section">The section title (and whether it is device/driver normative).</param>
    /// <param name="text">The quoted text.</param>
    public static Statement V1(string section, string text) => new($"virtio-ism v1, {section}", text);

    /// <summary>A decision of DESIGN.md where v1 is silent or contradicts itself.</summary>
    /// <param name="section">The DESIGN.md heading or bullet.</param>
    /// <param name="text">The quoted text.</param>
    public static Statement Design(string section, string text) => new($"DESIGN.md, {section}", text);
}

/// <summary>How one check ended on one combination.</summary>
public enum Outcome
{
    /// <summary>Every expectation held.</summary>
    Passed,

    /// <summary>An expectation did not hold (or the devices misbehaved): a conformance failure.</summary>
    Failed,

    /// <summary>It could not run on this machine; the result says why and how to fix it.</summary>
    Skipped,

    /// <summary>It does not apply to this combination (e.g. an eventq check when the events kind offers
    /// no eventq). Never a failure, also not with <c>--fail-on-skip</c>.</summary>
    NotApplicable,
}

/// <summary>One check's result on one combination.</summary>
/// <param name="CheckId">The check.</param>
/// <param name="Outcome">How it ended.</param>
/// <param name="Duration">Wall time, composition included.</param>
/// <param name="Reason">Why it failed, was skipped or does not apply; null when it passed.</param>
/// <param name="Fix">For a skip: how to make it run.</param>
public sealed record CheckResult(string CheckId, Outcome Outcome, TimeSpan Duration, string? Reason = null, string? Fix = null);

/// <summary>
/// One conformance check: it composes devices of the combination under test through
/// <see cref="CheckContext.Compose"/>, drives them through the Driver (<see cref="Vism.Driver.IsmClient"/>)
/// as guests would, and throws (through the context's <c>Expect</c>/<c>Fail</c>/<c>Skip</c> helpers)
/// when what it observes contradicts <see cref="Proves"/>.
/// </summary>
/// <param name="Id">A stable dotted id, e.g. <c>alloc.too-large</c>; JUnit test names and <c>--check</c> use it.</param>
/// <param name="Title">One line saying what is checked.</param>
/// <param name="Proves">The statement it proves, quoted.</param>
/// <param name="Body">The check; runs on a thread-pool thread and may block.</param>
public sealed record ConformanceCheck(string Id, string Title, Statement Proves, Action<CheckContext> Body)
{
    /// <summary>Runs the check against <paramref name="context"/>'s combination.</summary>
    /// <param name="context">The combination, the composer and the expectation helpers.</param>
    public void Run(CheckContext context) => Body(context);

    /// <inheritdoc />
    public override string ToString() => Id;
}
