using System.Globalization;

namespace Vism.Conformance.Reports;

/// <summary>
/// The matrix as text: rows are combinations, columns are checks (numbered; a legend names them),
/// cells are <c>pass</c>, <c>FAIL</c>, <c>skip</c> or <c>n/a</c> with the check's time. Columns that do
/// not fit the width continue in another block with the same rows. Then every failure with its
/// reason, and every skip with its reason and fix (identical ones grouped).
/// </summary>
public static class TableReport
{
    private const int CellWidth = 10;

    /// <summary>Writes the whole report.</summary>
    /// <param name="report">The report.</param>
    /// <param name="output">Where to write.</param>
    /// <param name="width">Characters per line (at least enough for one check column).</param>
    public static void Write(MatrixReport report, TextWriter output, int width = 120)
    {
        ArgumentNullException.ThrowIfNull(report);
        ArgumentNullException.ThrowIfNull(output);
        WriteLegend(report, output);
        WriteGrid(report, output, width);
        WriteReasons(report, output);
        WriteSummary(report, output);
    }

    /// <summary>One line per check: its column number, id and title.</summary>
    /// <param name="report">The report.</param>
    /// <param name="output">Where to write.</param>
    public static void WriteLegend(MatrixReport report, TextWriter output)
    {
        output.WriteLine("Checks:");
        int idWidth = report.Checks.Count == 0 ? 0 : report.Checks.Max(c => c.Id.Length);
        for (int i = 0; i < report.Checks.Count; i++)
            output.WriteLine($"  {i + 1,3}  {report.Checks[i].Id.PadRight(idWidth)}  {report.Checks[i].Title}");
        output.WriteLine();
    }

    /// <summary>The grid, in blocks of as many check columns as fit <paramref name="width"/>.</summary>
    /// <param name="report">The report.</param>
    /// <param name="output">Where to write.</param>
    /// <param name="width">Characters per line.</param>
    public static void WriteGrid(MatrixReport report, TextWriter output, int width)
    {
        const string corner = "combination";
        int first = Math.Max(corner.Length, report.Combinations.Count == 0 ? 0 : report.Combinations.Max(c => c.Combination.ToString().Length));
        int perBlock = Math.Max(1, (width - first) / (CellWidth + 1));
        for (int start = 0; start < report.Checks.Count; start += perBlock)
        {
            int end = Math.Min(report.Checks.Count, start + perBlock);
            output.Write(corner.PadRight(first));
            for (int i = start; i < end; i++)
                output.Write(" " + ("#" + (i + 1).ToString(CultureInfo.InvariantCulture)).PadRight(CellWidth));
            output.WriteLine();
            foreach (CombinationReport row in report.Combinations)
            {
                output.Write(row.Combination.ToString().PadRight(first));
                for (int i = start; i < end; i++)
                    output.Write(" " + Cell(i < row.Results.Count ? row.Results[i] : null).PadRight(CellWidth));
                output.WriteLine();
            }
            output.WriteLine();
        }
    }

    /// <summary>Failures, then skips grouped by reason, then how many checks did not apply.</summary>
    /// <param name="report">The report.</param>
    /// <param name="output">Where to write.</param>
    public static void WriteReasons(MatrixReport report, TextWriter output)
    {
        var failures = (from c in report.Combinations from r in c.Results where r.Outcome == Outcome.Failed select (c.Combination, r)).ToList();
        if (failures.Count > 0)
        {
            output.WriteLine($"Failures ({failures.Count}):");
            foreach ((Composition.Combination combination, CheckResult r) in failures)
                output.WriteLine($"  FAIL {combination} {r.CheckId}: {r.Reason}");
            output.WriteLine();
        }
        var skips = (from c in report.Combinations from r in c.Results where r.Outcome == Outcome.Skipped select (c.Combination, r))
            .GroupBy(x => (x.r.Reason, x.r.Fix)).ToList();
        if (skips.Count > 0)
        {
            output.WriteLine($"Skipped ({skips.Sum(g => g.Count())}):");
            foreach (var group in skips)
            {
                string where = string.Join(", ", group.GroupBy(x => x.Combination)
                    .Select(g => g.Count() == report.Checks.Count ? $"{g.Key} (all checks)" : $"{g.Key} {string.Join(" ", g.Select(x => x.r.CheckId))}"));
                output.WriteLine($"  skip {where}");
                output.WriteLine($"       why: {group.Key.Reason}");
                if (!string.IsNullOrEmpty(group.Key.Fix))
                    output.WriteLine($"       fix: {group.Key.Fix}");
            }
            output.WriteLine();
        }
        var notApplicable = (from c in report.Combinations from r in c.Results where r.Outcome == Outcome.NotApplicable select r).ToList();
        if (notApplicable.Count > 0)
        {
            output.WriteLine($"Not applicable ({notApplicable.Count}): checks of a feature the combination does not offer, e.g.");
            foreach (var group in notApplicable.GroupBy(r => r.Reason).Take(4))
                output.WriteLine($"  n/a  {string.Join(" ", group.Select(r => r.CheckId).Distinct())}: {group.Key}");
            output.WriteLine();
        }
    }

    /// <summary>The one-line totals.</summary>
    /// <param name="report">The report.</param>
    /// <param name="output">Where to write.</param>
    public static void WriteSummary(MatrixReport report, TextWriter output) =>
        output.WriteLine($"{report.Combinations.Count} combination(s) x {report.Checks.Count} check(s): " +
                         $"{report.Count(Outcome.Passed)} passed, {report.Count(Outcome.Failed)} failed, {report.Count(Outcome.Skipped)} skipped, " +
                         $"{report.Count(Outcome.NotApplicable)} not applicable, in {Time(report.Duration)}");

    /// <summary>A cell: the outcome and the time, e.g. <c>pass 12ms</c>.</summary>
    /// <param name="result">The result; null for a check that did not run.</param>
    /// <returns>At most <see cref="CellWidth"/> characters.</returns>
    public static string Cell(CheckResult? result) => result is null ? "-" : result.Outcome switch
    {
        Outcome.Passed => "pass " + Time(result.Duration),
        Outcome.Failed => "FAIL " + Time(result.Duration),
        Outcome.Skipped => "skip",
        _ => "n/a",
    };

    /// <summary>A short duration: <c>850ms</c>, <c>2.5s</c>, <c>42s</c>, <c>3m05s</c>.</summary>
    /// <param name="t">The duration.</param>
    /// <returns>At most five characters below ten minutes.</returns>
    public static string Time(TimeSpan t) =>
        t.TotalMilliseconds < 1000 ? $"{(int)t.TotalMilliseconds}ms"
        : t.TotalSeconds < 10 ? string.Create(CultureInfo.InvariantCulture, $"{t.TotalSeconds:0.0}s")
        : t.TotalSeconds < 60 ? $"{(int)t.TotalSeconds}s"
        : $"{(int)t.TotalMinutes}m{t.Seconds:00}s";
}
