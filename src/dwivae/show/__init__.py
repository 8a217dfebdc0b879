"""What a person looks at: the study's figures and the HTML report.
"""
