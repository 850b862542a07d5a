using Xunit.Abstractions;

namespace Vism.Conformance.Tests;

/// <summary>The whole suite over the in-repo plugins, composed by <see cref="DirectComposer"/> as a
/// plugin author's tests would: every check passes or does not apply, on every combination.</summary>
public sealed class SuiteTests(ITestOutputHelper output)
{
    public static TheoryData<string, string, string> FileMemory => Rows("file");

    public static TheoryData<string, string, string> HugetlbMemory => Rows("hugetlb");

    private static TheoryData<string, string, string> Rows(string memory)
    {
        var rows = new TheoryData<string, string, string>();
        foreach (string transport in new[] { "in-memory", "vhost-user", "mmio" })
            foreach (string events in new[] { "vq", "irq", "none" })
                rows.Add(transport, memory, events);
        return rows;
    }

    private async Task RunAll(string transport, string memory, string events)
    {
        var runner = new ConformanceRunner(InRepoPlugins.Composer(), NullLoggerFactory.Instance);
        MatrixReport report = await runner.RunAsync([new Combination(transport, memory, events)], ConformanceSuite.All);
        var text = new StringWriter();
        Reports.TableReport.Write(report, text);
        output.WriteLine(text.ToString());
        string[] failed = [.. report.Combinations.SelectMany(c => c.Results)
            .Where(r => r.Outcome == Outcome.Failed)
            .Select(r => $"{r.CheckId}: {r.Reason}")];
        Assert.True(failed.Length == 0, string.Join(Environment.NewLine, failed));
        Assert.False(report.AnySkipped, text.ToString());
        // What does not apply is only what the events kind does not offer, and persistence where the memory kind has none.
        int notApplicable = report.Count(Outcome.NotApplicable);
        Assert.Equal(events switch { "vq" => 4, "irq" => 3, _ => 13 } + (memory == "hugetlb" ? 3 : 0), notApplicable);
    }

    [Theory]
    [MemberData(nameof(FileMemory))]
    public Task EveryCheckPassesOrDoesNotApplyOnFileMemory(string transport, string memory, string events) => RunAll(transport, memory, events);

    [SkippableTheory]
    [MemberData(nameof(HugetlbMemory))]
    public Task EveryCheckPassesOrDoesNotApplyOnHugetlbMemory(string transport, string memory, string events)
    {
        Machine.RequireHugePages(InRepoPlugins.HugePages);
        return RunAll(transport, memory, events);
    }
}
