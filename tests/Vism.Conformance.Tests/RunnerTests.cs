namespace Vism.Conformance.Tests;

/// <summary>How the runner turns what a check does into a result.</summary>
public sealed class RunnerTests
{
    private static readonly Statement Because = new("test", "a statement");
    private static readonly Combination InMemory = new("in-memory", "file", "none");

    private static Task<CheckResult> Run(Action<CheckContext> body, ConformanceOptions? options = null) =>
        new ConformanceRunner(InRepoPlugins.Composer(), NullLoggerFactory.Instance, options)
            .RunOneAsync(InMemory, new ConformanceCheck("test.check", "a check", Because, body));

    [Fact]
    public async Task ACheckWhoseExpectationsHoldPasses()
    {
        CheckResult r = await Run(ctx => ctx.Expect(ctx.Compose().A.DevId != 0, "devid"));
        Assert.Equal(Outcome.Passed, r.Outcome);
        Assert.Null(r.Reason);
        Assert.True(r.Duration > TimeSpan.Zero);
    }

    [Fact]
    public async Task AFailedExpectationFailsWithItsReason()
    {
        CheckResult r = await Run(ctx => ctx.Expect(false, "what was expected and seen"));
        Assert.Equal((Outcome.Failed, "what was expected and seen"), (r.Outcome, r.Reason));
    }

    [Fact]
    public async Task SkipsAndNotApplicableCarryTheirReasonAndFix()
    {
        CheckResult skip = await Run(ctx => ctx.Skip("no widgets here", "install widgets"));
        Assert.Equal((Outcome.Skipped, "no widgets here", "install widgets"), (skip.Outcome, skip.Reason, skip.Fix));
        CheckResult na = await Run(ctx => ctx.NotApplicable("no such feature"));
        Assert.Equal((Outcome.NotApplicable, "no such feature"), (na.Outcome, na.Reason));
    }

    [Fact]
    public async Task AnUnexpectedExceptionFailsTheCheckNamingIt()
    {
        CheckResult r = await Run(_ => throw new InvalidOperationException("boom"));
        Assert.Equal(Outcome.Failed, r.Outcome);
        Assert.StartsWith("InvalidOperationException: boom", r.Reason);
    }

    [Fact]
    public async Task ACheckThatNeverEndsFailsAfterTheTimeoutAndTheRunGoesOn()
    {
        using var release = new ManualResetEventSlim();
        CheckResult r = await Run(ctx => { ctx.Compose(); release.Wait(); }, new ConformanceOptions { CheckTimeout = TimeSpan.FromSeconds(1) });
        release.Set();
        Assert.Equal((Outcome.Failed, "did not finish within 1 s"), (r.Outcome, r.Reason));
        Assert.Equal(Outcome.Passed, (await Run(ctx => ctx.Compose())).Outcome);
    }

    [Fact]
    public async Task DevicesACheckComposedAreStoppedWhenItEnds()
    {
        Vism.Core.IsmHost? host = null;
        await Run(ctx =>
        {
            Rig rig = ctx.Compose(new HostSpec { Devices = 3 });
            host = rig.Composition.Host;
            rig.A.Alloc();
            ctx.Fail("stop here");
        });
        Assert.NotNull(host);
        Assert.Equal(0, host.DeviceCount);
        Assert.Equal(0, host.RegionCount);
    }

    [Fact]
    public async Task TheReportHasOneRowPerCombinationAndOneResultPerCheckInOrder()
    {
        ConformanceCheck[] checks =
        [
            new("t.pass", "passes", Because, _ => { }),
            new("t.fail", "fails", Because, ctx => ctx.Fail("no")),
        ];
        Combination[] combinations = [InMemory, InMemory with { Memory = "hugetlb" }];
        var seen = new List<string>();
        MatrixReport report = await new ConformanceRunner(InRepoPlugins.Composer(), NullLoggerFactory.Instance)
            .RunAsync(combinations, checks, (c, r) => seen.Add($"{c} {r.CheckId}"));
        Assert.Equal(["in-memory/file/none t.pass", "in-memory/file/none t.fail", "in-memory/hugetlb/none t.pass", "in-memory/hugetlb/none t.fail"], seen);
        Assert.Equal(combinations, report.Combinations.Select(c => c.Combination));
        Assert.All(report.Combinations, c => Assert.Equal(["t.pass", "t.fail"], c.Results.Select(r => r.CheckId)));
        Assert.True(report.AnyFailed);
        Assert.Equal(2, report.Count(Outcome.Failed));
        Assert.Equal($"in-memory/file/none t.fail: no{Environment.NewLine}in-memory/hugetlb/none t.fail: no", report.FailureSummary());
    }

    [Fact]
    public void ChecksAreSelectedByIdOrPrefix()
    {
        Assert.Equal(["alloc.too-large"], ConformanceSuite.Select(["alloc.too-large"]).Select(c => c.Id));
        Assert.All(ConformanceSuite.Select(["perm"]), c => Assert.StartsWith("perm.", c.Id));
        Assert.All(ConformanceSuite.Select(["events"]), c => Assert.StartsWith("events.", c.Id));
        Assert.Throws<ArgumentException>(() => ConformanceSuite.Select(["event"])); // a prefix ends at a dot
        Assert.Equal(ConformanceSuite.All, ConformanceSuite.Select([]));
        Assert.Throws<ArgumentException>(() => ConformanceSuite.Select(["alloc.nope"]));
    }

    [Fact]
    public void EveryCheckHasAUniqueIdATitleAndAQuotedStatementWithItsSource()
    {
        Assert.Equal(ConformanceSuite.All.Count, ConformanceSuite.All.Select(c => c.Id).Distinct().Count());
        Assert.All(ConformanceSuite.All, c =>
        {
            Assert.Matches("^[a-z-]+\\.[a-z-]+$", c.Id);
            Assert.False(string.IsNullOrWhiteSpace(c.Title));
            Assert.Matches("^(virtio-ism v1|DESIGN.md|vism issue \\d)", c.Proves.Source);
            Assert.True(c.Proves.Text.Length > 20, c.Id);
        });
    }
}
