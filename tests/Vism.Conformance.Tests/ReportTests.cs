using System.Text.Json;
using System.Xml.Linq;
using Vism.Conformance.Reports;

namespace Vism.Conformance.Tests;

/// <summary>What the table, JUnit and JSON reports show for a known set of results.</summary>
public sealed class ReportTests
{
    private static readonly Statement Because = Statement.V1("Alloc ISM Region, device normative", "If size is greater than region_size, the device MUST set ack to VIRTIO_ISM_ERR.");

    private static MatrixReport Sample()
    {
        ConformanceCheck[] checks = [.. Enumerable.Range(1, 12).Select(i => new ConformanceCheck($"c.n{i}", $"check {i}", Because, _ => { }))];
        var a = new Combination("vhost-user", "file", "vq");
        var b = new Combination("mmio", "hugetlb", "irq");
        CheckResult Pass(int i) => new($"c.n{i}", Outcome.Passed, TimeSpan.FromMilliseconds(12 * i));
        return new MatrixReport(checks,
        [
            new CombinationReport(a, [.. Enumerable.Range(1, 12).Select(i => i switch
            {
                3 => new CheckResult("c.n3", Outcome.Failed, TimeSpan.FromSeconds(2.5), "ATTACH answered ack 0, expected ERR"),
                4 => new CheckResult("c.n4", Outcome.NotApplicable, TimeSpan.FromMilliseconds(3), "the device does not offer VIRTIO_ISM_F_EVENT_IRQ"),
                _ => Pass(i),
            })], TimeSpan.FromSeconds(4)),
            new CombinationReport(b, [.. Enumerable.Range(1, 12).Select(i =>
                new CheckResult($"c.n{i}", Outcome.Skipped, TimeSpan.FromMilliseconds(1), "no 2 MiB huge pages are reserved", "echo 64 > /proc/sys/vm/nr_hugepages"))],
                TimeSpan.FromSeconds(1)),
        ], new DateTimeOffset(2026, 11, 29, 10, 0, 0, TimeSpan.Zero), TimeSpan.FromSeconds(5));
    }

    [Fact]
    public void TheTableHasARowPerCombinationAndAColumnPerCheckWrappedToTheWidth()
    {
        var text = new StringWriter();
        TableReport.Write(Sample(), text, width: 80);
        string[] lines = text.ToString().Split(Environment.NewLine);
        Assert.Contains(lines, l => l.StartsWith("   12  c.n12  check 12", StringComparison.Ordinal));
        string[] headers = [.. lines.Where(l => l.StartsWith("combination", StringComparison.Ordinal))];
        Assert.True(headers.Length >= 2, "12 columns do not fit 80 characters: the grid continues in a second block");
        Assert.All(lines, l => Assert.True(l.Length <= 80 || !l.StartsWith("vhost-user/file/vq", StringComparison.Ordinal), l));
        string row = lines.First(l => l.StartsWith("vhost-user/file/vq", StringComparison.Ordinal));
        Assert.Contains("pass 12ms", row);
        Assert.Contains("FAIL 2.5s", row);
        Assert.Contains("n/a", row);
        Assert.Contains(lines, l => l.StartsWith("mmio/hugetlb/irq", StringComparison.Ordinal) && l.Contains("skip"));
        Assert.Contains("  FAIL vhost-user/file/vq c.n3: ATTACH answered ack 0, expected ERR", lines);
        Assert.Contains("  skip mmio/hugetlb/irq (all checks)", lines);
        Assert.Contains("       why: no 2 MiB huge pages are reserved", lines);
        Assert.Contains("       fix: echo 64 > /proc/sys/vm/nr_hugepages", lines);
        Assert.Contains("2 combination(s) x 12 check(s): 10 passed, 1 failed, 12 skipped, 1 not applicable, in 5.0s", lines);
    }

    [Theory]
    [InlineData(850, "850ms")]
    [InlineData(2500, "2.5s")]
    [InlineData(42_000, "42s")]
    [InlineData(185_000, "3m05s")]
    public void DurationsAreShort(int ms, string shown) => Assert.Equal(shown, TableReport.Time(TimeSpan.FromMilliseconds(ms)));

    [Fact]
    public void JUnitHasASuitePerCombinationAndACasePerCheckWithFailuresAndSkips()
    {
        XElement root = JUnitReport.Create(Sample()).Root!;
        Assert.Equal(("24", "1", "13"), (root.Attribute("tests")!.Value, root.Attribute("failures")!.Value, root.Attribute("skipped")!.Value));
        XElement[] suites = [.. root.Elements("testsuite")];
        Assert.Equal(["vhost-user/file/vq", "mmio/hugetlb/irq"], suites.Select(s => s.Attribute("name")!.Value));
        XElement failed = suites[0].Elements("testcase").Single(t => t.Attribute("name")!.Value == "c.n3");
        Assert.Equal("vism.matrix.vhost-user/file/vq", failed.Attribute("classname")!.Value);
        Assert.Equal("2.500", failed.Attribute("time")!.Value);
        XElement failure = failed.Element("failure")!;
        Assert.Equal("ATTACH answered ack 0, expected ERR", failure.Attribute("message")!.Value);
        Assert.Contains("If size is greater than region_size", failure.Value);
        Assert.Equal("not applicable: the device does not offer VIRTIO_ISM_F_EVENT_IRQ",
            suites[0].Elements("testcase").Single(t => t.Attribute("name")!.Value == "c.n4").Element("skipped")!.Attribute("message")!.Value);
        Assert.All(suites[1].Elements("testcase"), t =>
            Assert.Equal("no 2 MiB huge pages are reserved (fix: echo 64 > /proc/sys/vm/nr_hugepages)", t.Element("skipped")!.Attribute("message")!.Value));
        Assert.Equal("irq", suites[1].Element("properties")!.Elements("property").Single(p => p.Attribute("name")!.Value == "events").Attribute("value")!.Value);
    }

    [Fact]
    public void JsonCarriesTheChecksStatementsEveryResultAndTheTotals()
    {
        using JsonDocument doc = JsonDocument.Parse(JsonReport.Create(Sample()));
        JsonElement root = doc.RootElement;
        JsonElement check = root.GetProperty("checks")[0];
        Assert.Equal("c.n1", check.GetProperty("id").GetString());
        Assert.Equal("virtio-ism v1, Alloc ISM Region, device normative", check.GetProperty("source").GetString());
        Assert.Equal(Because.Text, check.GetProperty("statement").GetString());
        JsonElement first = root.GetProperty("combinations")[0];
        Assert.Equal(("vhost-user", "file", "vq"), (first.GetProperty("transport").GetString(), first.GetProperty("memory").GetString(), first.GetProperty("events").GetString()));
        JsonElement failed = first.GetProperty("results")[2];
        Assert.Equal(("c.n3", "failed", 2500L), (failed.GetProperty("check").GetString(), failed.GetProperty("outcome").GetString(), failed.GetProperty("durationMs").GetInt64()));
        Assert.Equal("not-applicable", first.GetProperty("results")[3].GetProperty("outcome").GetString());
        JsonElement skipped = root.GetProperty("combinations")[1].GetProperty("results")[0];
        Assert.Equal("echo 64 > /proc/sys/vm/nr_hugepages", skipped.GetProperty("fix").GetString());
        JsonElement totals = root.GetProperty("totals");
        Assert.Equal((10, 1, 12, 1), (totals.GetProperty("passed").GetInt32(), totals.GetProperty("failed").GetInt32(), totals.GetProperty("skipped").GetInt32(), totals.GetProperty("notApplicable").GetInt32()));
    }
}
