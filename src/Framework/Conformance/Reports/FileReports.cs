using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using System.Xml.Linq;

namespace Vism.Conformance.Reports;

/// <summary>
/// The matrix as JUnit XML, the format CI systems display: one <c>testsuite</c> per combination, one
/// <c>testcase</c> per check (class name <c>vism.matrix.&lt;combination&gt;</c>, name the check id),
/// <c>failure</c> with the reason and the statement, <c>skipped</c> with the reason and fix (checks
/// that do not apply are skipped with their reason too).
/// </summary>
public static class JUnitReport
{
    /// <summary>The report as an XML document.</summary>
    /// <param name="report">The report.</param>
    /// <returns>The document.</returns>
    public static XDocument Create(MatrixReport report)
    {
        ArgumentNullException.ThrowIfNull(report);
        Dictionary<string, ConformanceCheck> checks = report.Checks.ToDictionary(c => c.Id);
        var root = new XElement("testsuites",
            new XAttribute("name", "vism matrix"),
            new XAttribute("tests", report.Combinations.Sum(c => c.Results.Count)),
            new XAttribute("failures", report.Count(Outcome.Failed)),
            new XAttribute("errors", 0),
            new XAttribute("skipped", report.Count(Outcome.Skipped) + report.Count(Outcome.NotApplicable)),
            new XAttribute("time", Seconds(report.Duration)),
            new XAttribute("timestamp", report.Started.ToString("yyyy-MM-ddTHH:mm:ss", CultureInfo.InvariantCulture)));
        foreach (CombinationReport row in report.Combinations)
        {
            var suite = new XElement("testsuite",
                new XAttribute("name", row.Combination.ToString()),
                new XAttribute("tests", row.Results.Count),
                new XAttribute("failures", row.Count(Outcome.Failed)),
                new XAttribute("errors", 0),
                new XAttribute("skipped", row.Count(Outcome.Skipped) + row.Count(Outcome.NotApplicable)),
                new XAttribute("time", Seconds(row.Duration)),
                new XElement("properties",
                    Property("transport", row.Combination.Transport),
                    Property("memory", row.Combination.Memory),
                    Property("events", row.Combination.Events)));
            foreach (CheckResult r in row.Results)
            {
                var testcase = new XElement("testcase",
                    new XAttribute("classname", $"vism.matrix.{row.Combination}"),
                    new XAttribute("name", r.CheckId),
                    new XAttribute("time", Seconds(r.Duration)));
                ConformanceCheck? check = checks.GetValueOrDefault(r.CheckId);
                switch (r.Outcome)
                {
                    case Outcome.Failed:
                        testcase.Add(new XElement("failure", new XAttribute("message", r.Reason ?? "failed"), new XAttribute("type", "conformance"),
                            check is null ? "" : $"{check.Title}\nProves ({check.Proves.Source}): \"{check.Proves.Text}\"\n{r.Reason}"));
                        break;
                    case Outcome.Skipped:
                        testcase.Add(new XElement("skipped", new XAttribute("message", r.Fix is null ? r.Reason ?? "" : $"{r.Reason} (fix: {r.Fix})")));
                        break;
                    case Outcome.NotApplicable:
                        testcase.Add(new XElement("skipped", new XAttribute("message", $"not applicable: {r.Reason}")));
                        break;
                }
                suite.Add(testcase);
            }
            root.Add(suite);
        }
        return new XDocument(new XDeclaration("1.0", "utf-8", null), root);
    }

    /// <summary>Writes the report to <paramref name="path"/>.</summary>
    /// <param name="report">The report.</param>
    /// <param name="path">The file.</param>
    public static void Write(MatrixReport report, string path)
    {
        // XDocument.Save(path) starts UTF-8 files with a byte order mark, which some CI parsers reject.
        using FileStream stream = File.Create(path);
        using var writer = System.Xml.XmlWriter.Create(stream, new System.Xml.XmlWriterSettings { Encoding = new System.Text.UTF8Encoding(false), Indent = true });
        Create(report).Save(writer);
    }

    private static XElement Property(string name, string value) => new("property", new XAttribute("name", name), new XAttribute("value", value));

    private static string Seconds(TimeSpan t) => t.TotalSeconds.ToString("0.000", CultureInfo.InvariantCulture);
}

/// <summary>The matrix as JSON, for scripts: the checks (id, title, statement and its source), then
/// per combination every result (outcome, milliseconds, reason, fix), then the totals.</summary>
public static class JsonReport
{
    private static readonly JsonSerializerOptions Options = new()
    {
        WriteIndented = true,
        PropertyNamingPolicy = JsonNamingPolicy.CamelCase,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        Converters = { new JsonStringEnumConverter(JsonNamingPolicy.KebabCaseLower) },
    };

    /// <summary>The report as a JSON text.</summary>
    /// <param name="report">The report.</param>
    /// <returns>The JSON.</returns>
    public static string Create(MatrixReport report)
    {
        ArgumentNullException.ThrowIfNull(report);
        var document = new Document(
            report.Started,
            (long)report.Duration.TotalMilliseconds,
            [.. report.Checks.Select(c => new CheckDto(c.Id, c.Title, c.Proves.Source, c.Proves.Text))],
            [.. report.Combinations.Select(row => new CombinationDto(
                row.Combination.Transport, row.Combination.Memory, row.Combination.Events, (long)row.Duration.TotalMilliseconds,
                [.. row.Results.Select(r => new ResultDto(r.CheckId, r.Outcome, (long)r.Duration.TotalMilliseconds, r.Reason, r.Fix))]))],
            new TotalsDto(report.Count(Outcome.Passed), report.Count(Outcome.Failed), report.Count(Outcome.Skipped), report.Count(Outcome.NotApplicable)));
        return JsonSerializer.Serialize(document, Options);
    }

    /// <summary>Writes the report to <paramref name="path"/>.</summary>
    /// <param name="report">The report.</param>
    /// <param name="path">The file.</param>
    public static void Write(MatrixReport report, string path) => File.WriteAllText(path, Create(report));

    private sealed record Document(DateTimeOffset Started, long DurationMs, IReadOnlyList<CheckDto> Checks, IReadOnlyList<CombinationDto> Combinations, TotalsDto Totals);

    private sealed record CheckDto(string Id, string Title, string Source, string Statement);

    private sealed record CombinationDto(string Transport, string Memory, string Events, long DurationMs, IReadOnlyList<ResultDto> Results);

    private sealed record ResultDto(string Check, Outcome Outcome, long DurationMs, string? Reason, string? Fix);

    private sealed record TotalsDto(int Passed, int Failed, int Skipped, int NotApplicable);
}
