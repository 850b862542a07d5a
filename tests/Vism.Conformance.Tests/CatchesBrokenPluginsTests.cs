namespace Vism.Conformance.Tests;

/// <summary>The suite fails plugins that break the statements it proves, and only the checks concerned.</summary>
public sealed class CatchesBrokenPluginsTests
{
    private static async Task<IReadOnlyDictionary<string, CheckResult>> Run(Combination combination, params string[] checks)
    {
        var runner = new ConformanceRunner(InRepoPlugins.Composer(null, new TestPlugins()), NullLoggerFactory.Instance);
        MatrixReport report = await runner.RunAsync([combination], ConformanceSuite.Select(checks));
        return report.Combinations.Single().Results.ToDictionary(r => r.CheckId);
    }

    [Fact]
    public async Task MemoryThatHandsOutOldBytesFailsTheClearedCheck()
    {
        var results = await Run(new Combination("in-memory", "dirty", "none"), "alloc.cleared", "alloc.token-offset");
        Assert.Equal(Outcome.Failed, results["alloc.cleared"].Outcome);
        Assert.Contains("is not cleared: byte 0 is 0xee", results["alloc.cleared"].Reason);
        Assert.Equal(Outcome.Passed, results["alloc.token-offset"].Outcome);
    }

    [Fact]
    public async Task MemoryThatIgnoresItsCapacityFailsTheNoMemoryCheck()
    {
        var results = await Run(new Combination("in-memory", "dirty", "none"), "alloc.no-memory");
        Assert.Equal(Outcome.Failed, results["alloc.no-memory"].Outcome);
        Assert.Contains("ALLOC beyond the memory capacity of two regions answered ack 0, expected ERR", results["alloc.no-memory"].Reason);
    }

    [Fact]
    public async Task EventsThatNeverArriveFailTheEventChecksButNotTheOthers()
    {
        var results = await Run(new Combination("in-memory", "file", "mute"), "events.reach-peer", "events.eventq-record", "attach.shares-memory", "event-vector.needs-irq");
        Assert.Equal(Outcome.Failed, results["events.reach-peer"].Outcome);
        Assert.Contains("device b got no update event for its region", results["events.reach-peer"].Reason);
        Assert.Equal(Outcome.Failed, results["events.eventq-record"].Outcome);
        Assert.Equal(Outcome.Passed, results["attach.shares-memory"].Outcome);
        Assert.Equal(Outcome.Passed, results["event-vector.needs-irq"].Outcome);
    }

    [Fact]
    public async Task AThirdPartyTransportIsDrivenThroughTheConnectorInItsAssembly()
    {
        var runner = new ConformanceRunner(InRepoPlugins.Composer(null, new TestPlugins()), NullLoggerFactory.Instance);
        MatrixReport report = await runner.RunAsync([new Combination("echo", "file", "none")], ConformanceSuite.All);
        Assert.False(report.AnyFailed, report.FailureSummary());
        Assert.False(report.AnySkipped);
        Assert.True(report.Count(Outcome.Passed) >= 30);
    }

    [Fact]
    public async Task ATransportWithoutADriverConnectorIsSkippedWithHowToFixIt()
    {
        var results = await Run(new Combination("no-connector", "file", "none"), "alloc", "config.devid-unique");
        Assert.All(results.Values, r =>
        {
            Assert.Equal(Outcome.Skipped, r.Outcome);
            Assert.Equal("transport kind 'no-connector' has no driver connector", r.Reason);
            Assert.Contains("IDriverConnector", r.Fix);
        });
    }

    [Fact]
    public async Task AKindThatIsNotInstalledIsSkippedNamingTheInstalledOnes()
    {
        var results = await Run(new Combination("in-memory", "nonexistent", "none"), "config.layout");
        CheckResult r = results["config.layout"];
        Assert.Equal(Outcome.Skipped, r.Outcome);
        Assert.Equal("memory kind 'nonexistent' is not installed (installed: dirty, file, hugetlb)", r.Reason);
    }
}
