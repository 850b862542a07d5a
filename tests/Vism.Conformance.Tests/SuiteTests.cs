using Xunit.Abstractions;

namespace Vism.Conformance.Tests;

/// <summary>The whole suite over the in-repo plugins: every check passes or does not apply.</summary>
public sealed class SuiteTests(ITestOutputHelper output)
{
    private async Task RunAll(string transport, string memory, string events)
    {
        var runner = new ConformanceRunner(InRepoPlugins.Composer(), NullLoggerFactory.Instance);
        MatrixReport report = await runner.RunAsync([new Combination(transport, memory, events)], ConformanceSuite.All);
        var text = new StringWriter();
        Reports.TableReport.Write(report, text);
        output.WriteLine(text.ToString());
        Assert.False(report.AnyFailed, report.FailureSummary());
        Assert.False(report.AnySkipped, text.ToString());
        Assert.True(report.Count(Outcome.Passed) > 0);
    }

    [Theory]
    [InlineData("in-memory", "file", "none")]
    [InlineData("vhost-user", "file", "none")]
    [InlineData("mmio", "file", "none")]
    public Task Every_check_passes_or_does_not_apply_on_file_memory(string transport, string memory, string events) => RunAll(transport, memory, events);

    [SkippableTheory]
    [InlineData("vhost-user", "hugetlb", "none")]
    [InlineData("mmio", "hugetlb", "none")]
    public Task Every_check_passes_or_does_not_apply_on_hugetlb_memory(string transport, string memory, string events)
    {
        Machine.RequireHugePages(InRepoPlugins.HugePages);
        return RunAll(transport, memory, events);
    }
}
